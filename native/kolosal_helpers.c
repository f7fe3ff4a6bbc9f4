/* Small C loops that run once per scheduler step, kept here so no Python loop touches
 * every token of a batch or every entry of a 262k-wide logits row. Compiled into the same
 * cffi module as the llama.h bindings (see kolosal/llama/_ffi_build.py). */
#include "llama.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

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
_Static_assert(LANES == 16, "top_scan's blocks are at_least_mask16's");

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

/* Bit i set where p[i] >= floor, for the 16 floats at p: one vector compare where the CPU
 * has one (the module is built for the CPU it runs on, see _ffi_build.py). */
static inline uint32_t at_least_mask16(const float * p, float floor) {
#if defined(__AVX512F__)
    return (uint32_t) _mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_set1_ps(floor), _CMP_GE_OQ);
#elif defined(__AVX2__)
    const __m256 f = _mm256_set1_ps(floor);
    const uint32_t low = (uint32_t) _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), f, _CMP_GE_OQ));
    const uint32_t high = (uint32_t) _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8), f, _CMP_GE_OQ));
    return low | (high << 8);
#else
    uint32_t mask = 0;
    for (int32_t i = 0; i < 16; ++i) {
        mask |= (uint32_t) (p[i] >= floor) << i;
    }
    return mask;
#endif
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
        if (*filled == k) {   /* only the lanes that can enter: the others stay below it */
            for (uint32_t mask = at_least_mask16(logits + token, values[k - 1]); mask; mask &= mask - 1) {
                const int32_t at = token + __builtin_ctz(mask);
                top_insert(at, logits[at], k, filled, ids, values);
            }
            continue;
        }
        for (int32_t i = 0; i < LANES; ++i) {
            top_insert(token + i, logits[token + i], k, filled, ids, values);
        }
    }
    for (; token < end; ++token) {
        top_insert(token, logits[token], k, filled, ids, values);
    }
}

/* sum(exp((logits[start, end) - max) * scale)), every value <= max, scale > 0 (1: the
 * softmax sum; 1 / temperature: a tempered one). */
static double exp_sum_scaled(const float * logits, int32_t start, int32_t end, float max, float scale) {
    double lane_sum[LANES] = {0};   /* float terms, double sums: the lse matches a scalar double sum */
    int32_t token = start;
    for (; token + LANES <= end; token += LANES) {
        for (int32_t i = 0; i < LANES; ++i) {
            lane_sum[i] += exp_nonpositive((logits[token + i] - max) * scale);
        }
    }
    double sum = 0.0;
    for (int32_t i = 0; i < LANES; ++i) {
        sum += lane_sum[i];
    }
    for (; token < end; ++token) {
        sum += exp_nonpositive((logits[token] - max) * scale);
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
        sum += exp_sum_scaled(logits, start, end, max, 1.0f);
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
 * a fraction of its cost: no copy of the row into a 262k candidate array and no ordering
 * of it. The adjustments touch only their own entries (saved and put back: the row's
 * logprobs are read after sampling). Then, by case:
 * - top-k (k <= MAX_TOP_K): the k best by top_scan (one read of the row, blocks below the
 *   k-th best skipped by a vector compare), then top-p / min-p on those k;
 * - top-p / min-p: the row's max and sum of exp (vectorized), then only the tokens within
 *   `reach` logits of the max are gathered and ordered, `reach` widened until they hold
 *   top_p of the mass (every token outside is below every token inside, so the top-p set
 *   is a prefix of the gathered ones, and its cut is exact);
 * - neither: the sum of the tempered weights by blocks, then a walk inside one block.
 * The draw is one uniform number u in [0, 1) from the request's own seeded generator,
 * walked over the survivors in a fixed order (best first, or token order): the same logits
 * and u give the same token, alone or beside other rows. */
#define MAX_TOP_K 4096
#define FIRST_REACH 10.0f           /* logits below the max gathered first for top-p */

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

static float row_max(const float * logits, int32_t n_vocab) {
    float lane_max[LANES];
    for (int32_t i = 0; i < LANES; ++i) {
        lane_max[i] = -INFINITY;
    }
    int32_t token = 0;
    for (; token + LANES <= n_vocab; token += LANES) {
        for (int32_t i = 0; i < LANES; ++i) {
            lane_max[i] = logits[token + i] > lane_max[i] ? logits[token + i] : lane_max[i];
        }
    }
    float max = -INFINITY;
    for (int32_t i = 0; i < LANES; ++i) {
        max = lane_max[i] > max ? lane_max[i] : max;
    }
    for (; token < n_vocab; ++token) {
        max = logits[token] > max ? logits[token] : max;
    }
    return max;
}

/* The tokens with logit >= floor_logit, in token order; returns how many. A few hundred of
 * 262k tokens are within reach of the max: each block of 16 is one compare, and only the
 * tokens it flags are written. */
static int32_t gather_above(const float * logits, int32_t n_vocab, float floor_logit,
                            kolosal_candidate * out) {
    int32_t n = 0;
    int32_t token = 0;
    for (; token + 16 <= n_vocab; token += 16) {
        for (uint32_t mask = at_least_mask16(logits + token, floor_logit); mask; mask &= mask - 1) {
            const int32_t at = token + __builtin_ctz(mask);
            out[n].logit = logits[at];
            out[n].id = at;
            n += logits[at] != -INFINITY;
        }
    }
    for (; token < n_vocab; ++token) {
        if (logits[token] >= floor_logit && logits[token] != -INFINITY) {
            out[n].logit = logits[token];
            out[n].id = token;
            ++n;
        }
    }
    return n;
}

/* Cut best-first candidates[0, n) to top-p of `mass` (the weight of the distribution they
 * come from, at temperature 1) and to min-p; returns the new n (at least 1). */
static int32_t cut_sorted(const kolosal_candidate * candidates, int32_t n, float max, double mass,
                          float top_p, float min_p) {
    if (top_p < 1.0f && n > 1) {
        const double goal = (double) top_p * mass;
        double seen = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            seen += weight_of(candidates[i].logit - max);
            if (seen >= goal) {
                n = i + 1;
                break;
            }
        }
    }
    if (min_p > 0.0f && n > 1) {               /* p >= min_p * p_max, as logits */
        const float floor_logit = max + logf(min_p);
        int32_t kept = 1;
        while (kept < n && candidates[kept].logit >= floor_logit) {
            ++kept;
        }
        n = kept;
    }
    return n;
}

/* The top-p set of candidates[0, n) (the best tokens, fewest first, whose weight reaches
 * `goal`) moved to the front: a histogram of distances below the max over the candidates
 * finds the bin where the weight reaches the goal; the bins above it are kept whole (in
 * their order), only that bin's members are ordered and cut. Returns its size. */
#define CUT_BINS 512

static int32_t top_p_prefix(kolosal_candidate * candidates, int32_t n, float max, double goal) {
    float farthest = 0.0f;
    for (int32_t i = 0; i < n; ++i) {
        const float distance = max - candidates[i].logit;
        farthest = distance > farthest ? distance : farthest;
    }
    const float scale = farthest > 0.0f ? (float) (CUT_BINS - 1) / farthest : 0.0f;
    int32_t count[CUT_BINS] = {0};
    double weight[CUT_BINS] = {0};
    for (int32_t i = 0; i < n; ++i) {
        const int32_t bin = (int32_t) ((max - candidates[i].logit) * scale);
        count[bin] += 1;
        weight[bin] += weight_of(candidates[i].logit - max);
    }
    int32_t cut = CUT_BINS - 1;
    double above = 0.0;
    for (int32_t bin = 0; bin < CUT_BINS; ++bin) {
        if (above + weight[bin] >= goal) {
            cut = bin;
            break;
        }
        above += weight[bin];
    }
    /* partition: bins above the cut first (their order kept), then the cut bin's members */
    int32_t front = 0;
    for (int32_t i = 0; i < n; ++i) {
        if ((int32_t) ((max - candidates[i].logit) * scale) < cut) {
            const kolosal_candidate moved = candidates[i];
            candidates[i] = candidates[front];
            candidates[front++] = moved;
        }
    }
    int32_t end = front;
    for (int32_t i = front; i < n; ++i) {
        if ((int32_t) ((max - candidates[i].logit) * scale) == cut) {
            const kolosal_candidate moved = candidates[i];
            candidates[i] = candidates[end];
            candidates[end++] = moved;
        }
    }
    qsort(candidates + front, (size_t) (end - front), sizeof(kolosal_candidate), candidate_order);
    double seen = above;
    for (int32_t i = front; i < end; ++i) {
        seen += weight_of(candidates[i].logit - max);
        if (seen >= goal) {
            return i + 1;
        }
    }
    return end > 0 ? end : 1;
}

/* The survivors of top-k / top-p / min-p in `out` (best first after top-k; after top-p
 * alone, the whole bins first in token order, then the cut bin best first); returns how
 * many. */
static int32_t filter_candidates(const float * logits, int32_t n_vocab, float max, int32_t top_k,
                                 float top_p, float min_p, kolosal_candidate * out) {
    if (top_k > 0 && top_k <= MAX_TOP_K) {
        int32_t ids[MAX_TOP_K];
        float values[MAX_TOP_K];
        int32_t filled = 0;
        top_scan(logits, 0, n_vocab, top_k, &filled, ids, values);
        int32_t n = 0;
        for (int32_t i = 0; i < filled && values[i] != -INFINITY; ++i) {
            out[n].logit = values[i];
            out[n].id = ids[i];
            ++n;
        }
        /* top_scan keeps the first of equal values: ties in id order, as candidate_order */
        double mass = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            mass += weight_of(out[i].logit - max);
        }
        return cut_sorted(out, n, max, mass, top_p, min_p);
    }
    const double mass = exp_sum_scaled(logits, 0, n_vocab, max, 1.0f);
    float reach = min_p > 0.0f ? -logf(min_p) : FIRST_REACH;
    int32_t n = 0;
    for (;;) {
        n = gather_above(logits, n_vocab, max - reach, out);
        if (top_p >= 1.0f || reach > 1e30f) {
            break;
        }
        double held = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            held += weight_of(out[i].logit - max);
        }
        if (held >= (double) top_p * mass) {
            break;
        }
        reach = reach < 80.0f ? reach * 2.0f : INFINITY;  /* rare: a flat distribution */
    }
    if (top_k > 0 && n > top_k) {              /* a k over MAX_TOP_K: order them all, keep k */
        qsort(out, (size_t) n, sizeof(kolosal_candidate), candidate_order);
        n = top_k;
        double kept = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            kept += weight_of(out[i].logit - max);
        }
        return cut_sorted(out, n, max, kept, top_p, min_p);
    }
    if (top_p < 1.0f && n > 1) {
        n = top_p_prefix(out, n, max, (double) top_p * mass);
    }
    if (min_p > 0.0f && n > 1) {               /* p >= min_p * p_max, as logits: order kept */
        const float floor_logit = max + logf(min_p);
        int32_t kept = 0;
        for (int32_t i = 0; i < n; ++i) {
            if (out[i].logit >= floor_logit) {
                out[kept++] = out[i];
            }
        }
        n = kept;
    }
    return n;
}

#define NONE_ALLOWED (-2)

static inline bool is_allowed(const uint32_t * allowed, int32_t token) {
    return (allowed[token >> 5] >> (token & 31)) & 1u;
}

/* The token drawn from an adjusted row (see kolosal_sample). `allowed` (NULL: every token)
 * is used only with a filter and a temperature: the filters' survivors on the whole row that
 * the grammar allows, or NONE_ALLOWED when it allows none of them. */
static int32_t choose(const float * logits, int32_t n_vocab, float temperature, int32_t top_k,
                      float top_p, float min_p, double u, kolosal_candidate * scratch,
                      const uint32_t * allowed) {
    const float max = row_max(logits, n_vocab);
    int32_t chosen = 0;
    if (temperature <= 0.0f || max == -INFINITY) {        /* greedy: the first best token */
        while (chosen < n_vocab - 1 && logits[chosen] != max) {
            ++chosen;
        }
    } else if (top_k <= 0 && top_p >= 1.0f && min_p <= 0.0f) {  /* every token, in token order */
        const float inv_t = 1.0f / temperature;
        double * block_sum = (double *) scratch;          /* n_vocab entries of 8 bytes: room */
        const int32_t blocks = (n_vocab + BLOCK - 1) / BLOCK;
        double total = 0.0;
        for (int32_t b = 0; b < blocks; ++b) {
            const int32_t end = (b + 1) * BLOCK < n_vocab ? (b + 1) * BLOCK : n_vocab;
            block_sum[b] = exp_sum_scaled(logits, b * BLOCK, end, max, inv_t);
            total += block_sum[b];
        }
        const double goal = u * total;
        double seen = 0.0;
        int32_t b = 0;
        while (b < blocks - 1 && seen + block_sum[b] <= goal) {
            seen += block_sum[b];
            ++b;
        }
        const int32_t end = (b + 1) * BLOCK < n_vocab ? (b + 1) * BLOCK : n_vocab;
        chosen = -1;
        for (int32_t token = b * BLOCK; token < end; ++token) {
            const double w = weight_of((logits[token] - max) * inv_t);
            if (w > 0.0) {
                chosen = token;
                seen += w;
                if (seen > goal) {
                    break;
                }
            }
        }
        if (chosen < 0) {                      /* rounding left nothing in the block: the best */
            chosen = 0;
            while (chosen < n_vocab - 1 && logits[chosen] != max) {
                ++chosen;
            }
        }
    } else {
        const float inv_t = 1.0f / temperature;
        int32_t n = filter_candidates(logits, n_vocab, max, top_k, top_p, min_p, scratch);
        if (allowed != NULL) {
            int32_t kept = 0;
            for (int32_t i = 0; i < n; ++i) {
                if (is_allowed(allowed, scratch[i].id)) {
                    scratch[kept++] = scratch[i];
                }
            }
            if (kept == 0) {
                return NONE_ALLOWED;
            }
            n = kept;
        }
        double total = 0.0;
        for (int32_t i = 0; i < n; ++i) {
            total += weight_of((scratch[i].logit - max) * inv_t);
        }
        const double goal = u * total;
        double seen = 0.0;
        chosen = scratch[0].id;
        for (int32_t i = 0; i < n; ++i) {
            chosen = scratch[i].id;
            seen += weight_of((scratch[i].logit - max) * inv_t);
            if (seen > goal) {
                break;
            }
        }
    }
    return chosen;
}

/* Penalties, then bias, on their own entries of the row; their values before go to `saved`
 * (n_penalty + n_bias floats) for restore_row. */
static void adjust_row(float * logits, const int32_t * penalty_ids, const int32_t * penalty_counts,
                       int32_t n_penalty, float repeat, float frequency, float presence,
                       const int32_t * bias_ids, const float * bias_values, int32_t n_bias, float * saved) {
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
}

/* Put back what adjust_row changed, newest first (a token both penalized and biased). */
static void restore_row(float * logits, const int32_t * penalty_ids, int32_t n_penalty,
                        const int32_t * bias_ids, int32_t n_bias, const float * saved) {
    for (int32_t i = n_bias - 1; i >= 0; --i) {
        logits[bias_ids[i]] = saved[n_penalty + i];
    }
    for (int32_t i = n_penalty - 1; i >= 0; --i) {
        logits[penalty_ids[i]] = saved[i];
    }
}

/* Sample one token from a logits row (n_vocab floats, modified only for the duration of
 * the call, except for `allowed`'s fallback below). Penalties apply to the tokens of
 * penalty_ids (each seen penalty_counts times in the recent window): a positive logit is
 * divided by `repeat`, a negative one multiplied, then count * frequency + presence is
 * subtracted; then bias_values are added. temperature <= 0: the best token (the lowest id
 * on ties). `scratch` holds n_vocab candidates. Returns -1 when it cannot allocate.
 *
 * `allowed` (NULL: no grammar) is a grammar's llguidance bitmask. With a filter (top-k,
 * top-p, min-p) and a temperature, the filters first judge the model's own distribution and
 * the draw is among their survivors that the grammar allows, in proportion to their weights;
 * only when it allows none of them is the row masked (left so: disallowed tokens -inf) and
 * the filters applied to the allowed tokens alone. Without a filter, or greedy, the row is
 * masked first: the allowed tokens' distribution, exactly. */
int32_t kolosal_sample(float * logits, int32_t n_vocab,
                       const int32_t * penalty_ids, const int32_t * penalty_counts, int32_t n_penalty,
                       float repeat, float frequency, float presence,
                       const int32_t * bias_ids, const float * bias_values, int32_t n_bias,
                       float temperature, int32_t top_k, float top_p, float min_p, double u,
                       kolosal_candidate * scratch, const uint32_t * allowed) {
    const bool filtered = temperature > 0.0f && (top_k > 0 || top_p < 1.0f || min_p > 0.0f);
    if (allowed != NULL && !filtered) {
        kolosal_apply_token_mask(logits, n_vocab, allowed);
        allowed = NULL;
    }
    const int32_t n_touched = n_penalty + n_bias;
    float * saved = n_touched > 0 ? (float *) malloc(sizeof(float) * (size_t) n_touched) : NULL;
    if (n_touched > 0 && saved == NULL) {
        return -1;
    }
    adjust_row(logits, penalty_ids, penalty_counts, n_penalty, repeat, frequency, presence,
               bias_ids, bias_values, n_bias, saved);
    int32_t chosen = choose(logits, n_vocab, temperature, top_k, top_p, min_p, u, scratch, allowed);
    restore_row(logits, penalty_ids, n_penalty, bias_ids, n_bias, saved);
    if (chosen == NONE_ALLOWED) {              /* the grammar allowed no survivor: mask first */
        kolosal_apply_token_mask(logits, n_vocab, allowed);
        adjust_row(logits, penalty_ids, penalty_counts, n_penalty, repeat, frequency, presence,
                   bias_ids, bias_values, n_bias, saved);
        chosen = choose(logits, n_vocab, temperature, top_k, top_p, min_p, u, scratch, NULL);
        restore_row(logits, penalty_ids, n_penalty, bias_ids, n_bias, saved);
    }
    free(saved);
    return chosen;
}

/* The greedy token of each of n output rows of the last decode: the best logit, the lowest
 * id on ties (llama_sampler_init_greedy's rule). Two vectorized passes a row: the max, then
 * the first block of 16 that holds it (the row is in cache by then). A row without logits
 * gets -1. */
void kolosal_argmax_rows(struct llama_context * ctx, int32_t n_vocab, const int32_t * rows,
                         int32_t n, int32_t * out) {
    for (int32_t r = 0; r < n; ++r) {
        const float * logits = llama_get_logits_ith(ctx, rows[r]);
        if (logits == NULL) {
            out[r] = -1;
            continue;
        }
        const float max = row_max(logits, n_vocab);
        int32_t chosen = 0;
        int32_t token = 0;
        for (; token + 16 <= n_vocab; token += 16) {
            const uint32_t mask = at_least_mask16(logits + token, max);
            if (mask) {
                chosen = token + __builtin_ctz(mask);
                break;
            }
        }
        if (token + 16 > n_vocab) {   /* no full block held it: the max is in the tail */
            chosen = token;
            while (chosen < n_vocab - 1 && !(logits[chosen] >= max)) {
                ++chosen;
            }
        }
        out[r] = chosen;
    }
}

/* libllama's abort callback (llama_context_params.abort_callback): ggml's CPU backend asks it
 * before each graph node, so a decode stops within one node of the flag being set, and
 * llama_decode returns 2 with that batch's new positions removed. `flag` is an int32 the
 * context owns; any thread may set it (Context.interrupt). */
bool kolosal_interrupt_requested(void * flag) {
    return __atomic_load_n((const int32_t *) flag, __ATOMIC_RELAXED) != 0;
}

/* llguidance's tokenize callback (LlgTokenizeFn in its C ABI) over libllama's tokenizer:
 * user_data is the model's llama_vocab. Text only (no BOS, special tokens not parsed), as
 * llguidance asks; returns the number of tokens the text takes, writing at most out_len.
 * llguidance calls it from any thread: llama_tokenize reads the vocabulary only. */
size_t kolosal_llg_tokenize(const void * user_data, const uint8_t * bytes, size_t n_bytes,
                            uint32_t * out, size_t out_len) {
    if (n_bytes == 0 || n_bytes > INT32_MAX) {
        return 0;
    }
    const struct llama_vocab * vocab = (const struct llama_vocab *) user_data;
    int32_t capacity = out_len > INT32_MAX ? INT32_MAX : (int32_t) out_len;
    int32_t n = llama_tokenize(vocab, (const char *) bytes, (int32_t) n_bytes,
                               (llama_token *) out, capacity, false, false);
    return n < 0 ? (size_t) -(int64_t) n : (size_t) n;
}
