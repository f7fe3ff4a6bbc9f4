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
