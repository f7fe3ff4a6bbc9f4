/* Small C loops that run once per scheduler step, kept here so no Python loop touches
 * every token of a batch or every entry of a 262k-wide logits row. Compiled into the same
 * cffi module as the llama.h bindings (see kolosal/llama/_ffi_build.py). */
#include "llama.h"

#include <math.h>
#include <stdlib.h>

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

/* Log-softmax facts of one logits row, no allocation: returns log(sum(exp(logits))) and
 * writes the k best token ids and their log-probabilities (best first) into
 * top_ids/top_logprobs. k may be 0. Used only for rows that asked for logprobs, before any
 * grammar mask or sampler touches the row.
 *
 * Written for the vectorizer (with -fno-trapping-math, see _ffi_build.py) and for one read
 * of the row from memory (a 262k row is 1 MiB, and a step's rows are not in cache): the
 * k best (whose first is the max) by LANES-wide blocks that only fall back to scalar
 * insertion when a block holds a value above the k-th best, and the sum of exponentials in
 * LANES double accumulators with a polynomial float exp (glibc's expf does not vectorize).
 * 1.1-1.9 ms a 262k row before, ~0.3 ms now on a 2-core AVX2 EPYC. */
#define LANES 16

/* exp(x) for x <= 0 (Cephes' expf polynomial, relative error ~1e-7). Below -87 it returns
 * exp(-87) ~ 1.6e-38 instead of 0 (or of a denormal): against a sum that is at least 1
 * (the max's own term), 262k of those change nothing. -inf (a masked token) lands there too. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float round_magic = 12582912.0f;              /* 1.5 * 2^23: rounds to nearest */
    const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;   /* x - n ln 2, in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { int32_t bits; float value; } scale;
    scale.bits = ((int32_t) n + 127) << 23;            /* 2^n, n in [-126, 0] */
    return p * scale.value;
}

/* Insert token's value into the sorted (best first) top list of `*filled` <= k entries. */
static inline void top_insert(int32_t token, float value, int32_t k, int32_t * filled,
                              int32_t * ids, float * values) {
    if (*filled == k && !(value > values[k - 1])) {
        return;
    }
    int32_t at = *filled < k ? (*filled)++ : k - 1;
    while (at > 0 && values[at - 1] < value) {
        values[at] = values[at - 1];
        ids[at] = ids[at - 1];
        --at;
    }
    values[at] = value;
    ids[at] = token;
}

/* The k best of logits[start, end) merged into the sorted top list; LANES-wide blocks are
 * skipped with one vector compare unless they hold a value above the k-th best. */
static void top_scan(const float * logits, int32_t start, int32_t end, int32_t k,
                     int32_t * filled, int32_t * ids, float * values) {
    int32_t token = start;
    for (; token + LANES <= end; token += LANES) {
        if (*filled == k) {
            const float threshold = values[k - 1];
            int32_t above = 0;
            for (int32_t i = 0; i < LANES; ++i) {
                above |= logits[token + i] > threshold;
            }
            if (!above) {
                continue;
            }
        }
        for (int32_t i = 0; i < LANES; ++i) {
            top_insert(token + i, logits[token + i], k, filled, ids, values);
        }
    }
    for (; token < end; ++token) {
        top_insert(token, logits[token], k, filled, ids, values);
    }
}

/* sum(exp(logits[start, end) - max)), every value <= max. */
static double exp_sum(const float * logits, int32_t start, int32_t end, float max) {
    double lane_sum[LANES] = {0};   /* float terms, double sums: the lse matches a scalar double sum */
    int32_t token = start;
    for (; token + LANES <= end; token += LANES) {
        for (int32_t i = 0; i < LANES; ++i) {
            lane_sum[i] += exp_nonpositive(logits[token + i] - max);
        }
    }
    double sum = 0.0;
    for (int32_t i = 0; i < LANES; ++i) {
        sum += lane_sum[i];
    }
    for (; token < end; ++token) {
        sum += exp_nonpositive(logits[token] - max);
    }
    return sum;
}

/* One pass over the row from memory: each BLOCK (8 KiB, stays in L1) is scanned for the top
 * k, whose first is the max so far, then summed against that max; when the max rises, the
 * sum so far is rescaled once (online softmax). */
#define BLOCK 2048

float kolosal_logprobs(const float * logits, int32_t n_vocab, int32_t k,
                       int32_t * top_ids, float * top_logprobs) {
    int32_t own_id;                 /* k == 0: still find the max, as the top 1 */
    float own_value;
    int32_t * ids = k > 0 ? top_ids : &own_id;
    float * values = k > 0 ? top_logprobs : &own_value;
    const int32_t kk = k > 0 ? k : 1;
    int32_t filled = 0;
    float max = -INFINITY;
    double sum = 0.0;
    for (int32_t start = 0; start < n_vocab; start += BLOCK) {
        const int32_t end = start + BLOCK < n_vocab ? start + BLOCK : n_vocab;
        top_scan(logits, start, end, kk, &filled, ids, values);
        if (filled == 0 || values[0] == -INFINITY) {
            continue;               /* nothing finite yet: every term so far is 0 */
        }
        if (values[0] > max) {
            sum = max == -INFINITY ? 0.0 : sum * exp((double) max - (double) values[0]);
            max = values[0];
        }
        sum += exp_sum(logits, start, end, max);
    }
    const float lse = max + (float) log(sum);
    for (int32_t i = 0; i < filled && k > 0; ++i) {
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

/* ---- sampling -----------------------------------------------------------------------
 * One row's token, with the semantics of libllama's chain penalties -> logit bias -> top-k
 * -> top-p -> min-p -> temperature -> dist (what kolosal.llama.sampler built before), at
 * about the cost of a greedy pick: no copy of the row into a 262k candidate array and no
 * ordering of it. The adjustments touch only their own entries (saved and put back: the
 * row's logprobs are read after sampling). The filters work on a histogram of each token's
 * distance below the max: whole bins above the cut are kept unread, only the tokens of the
 * bins down to the cut are gathered and ordered (a few hundred for top_p 0.95 on a peaked
 * distribution). The draw is one uniform number u in [0, 1) from the request's own seeded
 * generator, walked over the survivors in a fixed order: the same logits and u give the
 * same token, alone or beside other rows. */
#define HIST_BINS 1024
#define HIST_PER_UNIT 32.0f          /* bins per unit of logit: the last bin holds d >= 32 */

typedef struct kolosal_candidate {
    float logit;
    int32_t id;
} kolosal_candidate;

/* exp(x) for x <= 0, exactly 0 below -87 (a masked token's -inf included) */
static inline double weight_of(float x) {
    return x < -87.0f ? 0.0 : (double) exp_nonpositive(x);
}

static int candidate_order(const void * a, const void * b) {
    const kolosal_candidate * x = (const kolosal_candidate *) a;
    const kolosal_candidate * y = (const kolosal_candidate *) b;
    if (x->logit != y->logit) {
        return x->logit > y->logit ? -1 : 1;       /* best first */
    }
    return (x->id > y->id) - (x->id < y->id);      /* ties: the lower id first */
}

static inline int32_t bin_of(float distance) {
    const float scaled = distance * HIST_PER_UNIT;
    return scaled < (float) (HIST_BINS - 1) ? (int32_t) scaled : HIST_BINS - 1;
}

/* The survivors of top-k / top-p / min-p, best first, in `out`; returns how many. */
static int32_t filter_candidates(const float * logits, int32_t n_vocab, float max, int32_t top_k,
                                 float top_p, float min_p, kolosal_candidate * out) {
    int32_t count[HIST_BINS] = {0};
    double mass[HIST_BINS] = {0};
    double total = 0.0;
    const int need_mass = top_k <= 0 && top_p < 1.0f;
    for (int32_t token = 0; token < n_vocab; ++token) {
        const float logit = logits[token];
        if (logit == -INFINITY) {
            continue;
        }
        const int32_t bin = bin_of(max - logit);
        count[bin] += 1;
        if (need_mass) {
            const double w = weight_of(logit - max);
            mass[bin] += w;
            total += w;
        }
    }
    /* the last bin every survivor can be in */
    int32_t cut = HIST_BINS - 1;
    if (top_k > 0) {
        int32_t seen = 0;
        for (int32_t bin = 0; bin < HIST_BINS; ++bin) {
            seen += count[bin];
            if (seen >= top_k) { cut = bin; break; }
        }
    } else if (top_p < 1.0f) {
        double seen = 0.0;
        const double goal = (double) top_p * total;
        for (int32_t bin = 0; bin < HIST_BINS; ++bin) {
            seen += mass[bin];
            if (seen >= goal) { cut = bin; break; }
        }
    } else if (min_p > 0.0f) {
        cut = bin_of(-logf(min_p));
    }
    int32_t n = 0;
    for (int32_t token = 0; token < n_vocab; ++token) {
        const float logit = logits[token];
        if (logit != -INFINITY && bin_of(max - logit) <= cut) {
            out[n].logit = logit;
            out[n].id = token;
            ++n;
        }
    }
    qsort(out, (size_t) n, sizeof(kolosal_candidate), candidate_order);
    if (top_k > 0 && n > top_k) {
        n = top_k;
    }
    if (top_p < 1.0f && n > 1) {               /* the smallest best-first set reaching top_p */
        double sum = total;                    /* of the whole distribution, or of the top k */
        if (top_k > 0) {
            sum = 0.0;
            for (int32_t i = 0; i < n; ++i) {
                sum += weight_of(out[i].logit - max);
            }
        }
        const double goal = (double) top_p * sum;
        double seen = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            seen += weight_of(out[i].logit - max);
            if (seen >= goal) { n = i + 1; break; }
        }
    }
    if (min_p > 0.0f && n > 1) {               /* p >= min_p * p_max, as logits */
        const float floor_logit = max + logf(min_p);
        int32_t kept = 1;
        while (kept < n && out[kept].logit >= floor_logit) {
            ++kept;
        }
        n = kept;
    }
    return n;
}

/* Sample one token from a logits row (n_vocab floats, modified only for the duration of
 * the call). Penalties apply to the tokens of penalty_ids (each seen penalty_counts times
 * in the recent window): a positive logit is divided by `repeat`, a negative one multiplied,
 * then count * frequency + presence is subtracted; then bias_values are added. temperature
 * <= 0: the best token (the lowest id on ties). `scratch` holds n_vocab candidates. */
int32_t kolosal_sample(float * logits, int32_t n_vocab,
                       const int32_t * penalty_ids, const int32_t * penalty_counts, int32_t n_penalty,
                       float repeat, float frequency, float presence,
                       const int32_t * bias_ids, const float * bias_values, int32_t n_bias,
                       float temperature, int32_t top_k, float top_p, float min_p, double u,
                       kolosal_candidate * scratch) {
    const int32_t n_touched = n_penalty + n_bias;
    float * saved = n_touched > 0 ? (float *) malloc(sizeof(float) * (size_t) n_touched) : NULL;
    if (n_touched > 0 && saved == NULL) {
        return -1;
    }
    for (int32_t i = 0; i < n_penalty; ++i) {
        const int32_t token = penalty_ids[i];
        saved[i] = logits[token];
        float logit = logits[token];
        logit = logit <= 0.0f ? logit * repeat : logit / repeat;
        logits[token] = logit - (float) penalty_counts[i] * frequency - (penalty_counts[i] > 0 ? presence : 0.0f);
    }
    for (int32_t i = 0; i < n_bias; ++i) {
        saved[n_penalty + i] = logits[bias_ids[i]];
        logits[bias_ids[i]] += bias_values[i];
    }
    float max = -INFINITY;
    int32_t best = 0;
    for (int32_t token = 0; token < n_vocab; ++token) {
        if (logits[token] > max) {
            max = logits[token];
            best = token;
        }
    }
    int32_t chosen = best;
    if (temperature > 0.0f && max > -INFINITY) {
        const float inv_t = 1.0f / temperature;
        if (top_k <= 0 && top_p >= 1.0f && min_p <= 0.0f) {    /* the whole vocabulary, in id order */
            double total = 0.0;
            for (int32_t token = 0; token < n_vocab; ++token) {
                total += weight_of((logits[token] - max) * inv_t);
            }
            const double goal = u * total;
            double seen = 0.0;
            for (int32_t token = 0; token < n_vocab; ++token) {
                const double w = weight_of((logits[token] - max) * inv_t);
                if (w > 0.0) {
                    chosen = token;
                    seen += w;
                    if (seen > goal) {
                        break;
                    }
                }
            }
        } else {
            const int32_t n = filter_candidates(logits, n_vocab, max, top_k, top_p, min_p, scratch);
            double total = 0.0;
            for (int32_t i = 0; i < n; ++i) {
                total += weight_of((scratch[i].logit - max) * inv_t);
            }
            const double goal = u * total;
            double seen = 0.0;
            for (int32_t i = 0; i < n; ++i) {
                chosen = scratch[i].id;
                seen += weight_of((scratch[i].logit - max) * inv_t);
                if (seen > goal) {
                    break;
                }
            }
        }
    }
    for (int32_t i = n_bias - 1; i >= 0; --i) {            /* put the row back, newest first */
        logits[bias_ids[i]] = saved[n_penalty + i];
    }
    for (int32_t i = n_penalty - 1; i >= 0; --i) {
        logits[penalty_ids[i]] = saved[i];
    }
    free(saved);
    return chosen;
}
