/* Small C loops that run once per scheduler step, kept here so no Python loop touches
 * every token of a batch or every entry of a 262k-wide logits row. Compiled into the same
 * cffi module as the llama.h bindings (see kolosal/llama/_ffi_build.py). */
#include "llama.h"

#include <math.h>

/* Fill the first n_tokens rows of a batch made by llama_batch_init(..., n_seq_max=1). */
void kolosal_batch_fill(struct llama_batch * batch, int32_t n_tokens, const llama_token * tokens,
                        const llama_pos * positions, const llama_seq_id * seq_ids,
                        const int8_t * logits) {
    for (int32_t i = 0; i < n_tokens; ++i) {
        batch->token[i] = tokens[i];
        batch->pos[i] = positions[i];
        batch->n_seq_id[i] = 1;
        batch->seq_id[i][0] = seq_ids[i];
        batch->logits[i] = logits[i];
    }
    batch->n_tokens = n_tokens;
}

/* Log-softmax facts of one logits row in two passes, no allocation: returns
 * log(sum(exp(logits))) and writes the k best token ids and their log-probabilities
 * (best first) into top_ids/top_logprobs. k may be 0. Used only for rows that asked for
 * logprobs, before any grammar mask or sampler touches the row. */
float kolosal_logprobs(const float * logits, int32_t n_vocab, int32_t k,
                       int32_t * top_ids, float * top_logprobs) {
    float max = -INFINITY;
    int32_t filled = 0;
    for (int32_t token = 0; token < n_vocab; ++token) {
        const float value = logits[token];
        if (value > max) {
            max = value;
        }
        if (k > 0 && (filled < k || value > top_logprobs[filled - 1])) {
            int32_t at = filled < k ? filled++ : k - 1;
            while (at > 0 && top_logprobs[at - 1] < value) {
                top_logprobs[at] = top_logprobs[at - 1];
                top_ids[at] = top_ids[at - 1];
                --at;
            }
            top_logprobs[at] = value;
            top_ids[at] = token;
        }
    }
    double sum = 0.0;
    for (int32_t token = 0; token < n_vocab; ++token) {
        sum += expf(logits[token] - max);
    }
    const float lse = max + (float) log(sum);
    for (int32_t i = 0; i < filled; ++i) {
        top_logprobs[i] -= lse;
    }
    return lse;
}

/* Constrained decoding: forbid every token whose bit is 0 in a llguidance bitmask
 * (32 tokens per uint32 word, least significant bit first). Word by word: a word of all
 * ones (inside a JSON string most tokens are allowed) is skipped, any other is a
 * branch-free select the compiler vectorizes; about 6x faster than a bit test per token
 * over a 262k vocabulary (~80 us a row instead of ~480). */
void kolosal_apply_token_mask(float * logits, int32_t n_vocab, const uint32_t * mask) {
    const int32_t words = n_vocab / 32;
    for (int32_t word = 0; word < words; ++word) {
        const uint32_t bits = mask[word];
        if (bits == 0xFFFFFFFFu) {
            continue;
        }
        float * row = logits + 32 * word;
        for (int32_t i = 0; i < 32; ++i) {
            row[i] = ((bits >> i) & 1u) ? row[i] : -INFINITY;
        }
    }
    for (int32_t token = 32 * words; token < n_vocab; ++token) {
        if (!((mask[token >> 5] >> (token & 31)) & 1u)) {
            logits[token] = -INFINITY;
        }
    }
}
