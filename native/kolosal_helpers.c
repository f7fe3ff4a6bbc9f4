/* Small C loops that run once per scheduler step, kept here so no Python loop touches
 * every token of a batch or every entry of a 262k-wide logits row. Compiled into the same
 * cffi module as the llama.h bindings (see kolosal/llama/_ffi_build.py). */
#include "llama.h"

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

/* Greedy sampling for many rows at once: out[k] = argmax of the logits of batch row rows[k].
 * Ties go to the lowest token id, as in llama_sampler_init_greedy. */
void kolosal_argmax_rows(struct llama_context * ctx, const int32_t * rows, int32_t n_rows,
                         int32_t n_vocab, llama_token * out) {
    for (int32_t k = 0; k < n_rows; ++k) {
        const float * logits = llama_get_logits_ith(ctx, rows[k]);
        int32_t best = 0;
        float best_logit = logits[0];
        for (int32_t t = 1; t < n_vocab; ++t) {
            if (logits[t] > best_logit) {
                best_logit = logits[t];
                best = t;
            }
        }
        out[k] = best;
    }
}
