#version 450
// sample: draw one token from each row of logits, as shaderbay.backends.numpy.kernels.sample_token
// defines it, with the settings, counters and history of the row's slot; one workgroup per
// row (grid-stride), each row computed alone, so its token never depends on the other rows. Float32 arithmetic where the reference
// uses float64, so a draw can differ only where the reference sits within float32
// rounding of a boundary (a cumulative mass at exactly the target or at top_p).
//
// 1. Repetition penalty: the distinct ids of history[:hist_len] are set in a bitmap in
//    shared memory; a vocabulary larger than the bitmap (BITMAP_IDS) is processed window by
//    window, the bitmap refilled from the history for each window.
// 2. temperature <= 0: greedy, the smallest index of the largest penalised logit.
// 3. Pass 1: the maximum M and S = sum exp((l - M) / T) (online, per invocation).
//    prob(l) = exp((l - M) / T) / S everywhere after.
// 4. The kept set is {l >= T*}, T* = max(t_k, t_p) in logit space: t_k the top_k-th largest
//    logit, t_p the largest logit v with mass(l >= v) >= top_p. Both are the largest v with
//    pred(v) = count(l >= v) >= top_k || mass(l >= v) >= top_p (top_k 0 or >= n: n; top_p
//    1: never), which holds exactly for v <= T*. Comparing logits rather than float32
//    probabilities keeps apart elements whose probabilities round to the same float.
//    * Few candidates: pass 2 counts and sums the elements above 16 logit thresholds
//      M - Z_j * T (Z_j from 0.5 to 80 nats); the highest threshold where pred holds is
//      a lower bound of T*. If at most CAP elements lie above it (or n <= CAP), pass 3
//      copies them (key, prob, index) into shared memory, and T* and the draw are
//      resolved there exactly: O(candidates^2 / WG) compares, no sort.
//    * Otherwise (a flat distribution, a large top_k, or no filter at all): T* by a 16-way
//      search on the order keys of the logits, 16 times narrower a pass, starting from the
//      bracket pass 2 found (at most 8 passes over the logits),
//      then the index-order walk over the vocabulary in tiles of 8 * WG_SIZE ids (8
//      consecutive ids per invocation, a workgroup scan per tile), stopping at the tile
//      that holds the target.
//    Every pass over the logits loads 4 (strided passes) or 8 (walk) values per invocation
//    before using them: the loads are latency-bound otherwise.
//    The walk: the first kept id (in index order) whose cumulative mass exceeds
//    u * (kept mass), u = uniform(seed, step); the last kept id if rounding leaves none.
//    min_p > 0 raises the kept set's floor to t_m = M + T * ln(min_p) (p >= min_p * max p):
//    pass 2 takes a threshold at or below t_m as a lower bound too, the compact path raises
//    T* to t_m, and the search path, where t_m is above its T*, sums the kept mass in one
//    more pass.
// 5. out[r] = the token; history[slot, hist_len] = the token if hist_len < hist_cap.
#extension GL_EXT_control_flow_attributes : enable
#include "kernel_sample.glsl"

#define NO_INDEX 0xFFFFFFFFu
#define LOWEST -3.0e38  // a finite stand-in for -inf (see common.glsl)
#ifndef CAP
#define CAP 896u  // candidates kept in shared memory
#endif
#ifndef BITMAP_WORDS
#define BITMAP_WORDS 4752u  // 152064 ids: every vocabulary up to Qwen2's 151936
#endif
#define BITMAP_IDS (BITMAP_WORDS * 32u)
#define TILE (8u * WG_SIZE)  // ids per tile of the full walk

#if SUBGROUPS
#define RED_SLOTS (WG_SIZE / 4)  // one per subgroup (subgroups of at least 4 invocations)
#else
#define RED_SLOTS WG_SIZE
#endif

shared uint bitmap[BITMAP_WORDS];
shared uint cand_key[CAP];
shared float cand_prob[CAP];  // also the scan scratch of the full walk (CAP >= WG_SIZE)
shared uint cand_idx[CAP];
shared uvec4 red[RED_SLOTS];
shared uint cand_count;

#include "sample_reductions.glsl"

#include "sample_logits.glsl"

void main() {
    uint t = gl_LocalInvocationIndex;
    uint n = p.n;
    for (uint r = gl_WorkGroupID.x; r < p.rows; r += gl_NumWorkGroups.x) {
        uint slot = seqs[r];
        if (slot >= p.n_seqs) {
            continue;  // not a slot (the host's duty): nothing to read
        }
        uint seed = state[4u * slot];
        uint step = state[4u * slot + 1u];
        uint hist_len = state[4u * slot + 2u];
        uint sb = slot * SETTINGS;
        g_temp = settings[sb];
        float top_k = settings[sb + 1u];
        g_top_p = settings[sb + 2u];
        g_pen = settings[sb + 3u];
        g_min_p = settings[sb + 4u];
        g_row = r * n;
        g_hist = slot * p.hist_cap;
        g_n = n;
        g_used = min(hist_len, p.hist_cap);
        g_penalty = g_pen != 1.0;
        g_multiwin = g_penalty && n > BITMAP_IDS;
        g_win = g_multiwin ? BITMAP_IDS : n;
        if (g_penalty && !g_multiwin) {
            load_window(0u);
        }

        uint token = 0u;
        if (g_temp <= 0.0) {
            token = greedy_token();
        } else {
            float T = g_temp;
            vec2 mass = max_and_sum(T);  // pass 1
            float M = mass.x;
            float S = mass.y;

            uint kk = (top_k >= 1.0 && top_k < float(n)) ? uint(top_k) : n;
            bool topp = g_top_p < 1.0;
            bool filtering = kk < n || topp;
            bool minp = g_min_p > 0.0;
            float tm = M + T * log(max(g_min_p, 1.0e-30));  // the min_p floor in logit space
            uint mkey = minp ? order_key(tm) : 0u;
            float u = float(hash32(seed ^ hash32(step)) >> 8) / 16777216.0;

            // --- pass 2: a lower bound of T* with few elements above it ------------------------
            bool compact = n <= CAP;
            float theta = LOWEST;  // candidates: l >= theta (all when n <= CAP)
            uint search_lo = 0u;  // the key search's bracket: pred(search_lo), T* < search_hi
            uint search_hi = 0xFFFFFFFFu;
            float lo_mass = 1.0;  // mass(l >= search_lo): all of it (S / S) to begin with
            if (!compact && (filtering || minp)) {
                vec4 ta = M - vec4(0.5, 1.0, 1.5, 2.0) * T;
                vec4 tb = M - vec4(3.0, 4.0, 5.0, 6.0) * T;
                vec4 tc = M - vec4(8.0, 10.0, 12.0, 16.0) * T;
                vec4 td = M - vec4(20.0, 28.0, 40.0, 80.0) * T;
                vec4 ca = vec4(0.0), cb = vec4(0.0), cc = vec4(0.0), cd = vec4(0.0);
                vec4 ma = vec4(0.0), mb = vec4(0.0), mc = vec4(0.0), md = vec4(0.0);
                FOR_EACH_LOGIT({
                    if (l >= td.w) {
                        float pr = exp((l - M) / T) / S;
                        vec4 l4 = vec4(l);
                        vec4 ga = vec4(greaterThanEqual(l4, ta));
                        vec4 gb = vec4(greaterThanEqual(l4, tb));
                        vec4 gc = vec4(greaterThanEqual(l4, tc));
                        vec4 gd = vec4(greaterThanEqual(l4, td));
                        ca += ga;
                        cb += gb;
                        cc += gc;
                        cd += gd;
                        ma += ga * pr;
                        mb += gb * pr;
                        mc += gc * pr;
                        md += gd * pr;
                    }
                })
                ca = wg_sum4(ca);
                cb = wg_sum4(cb);
                cc = wg_sum4(cc);
                cd = wg_sum4(cd);
                ma = wg_sum4(ma);
                mb = wg_sum4(mb);
                mc = wg_sum4(mc);
                md = wg_sum4(md);
                // the highest threshold where pred holds (counts are exact: below 2^24); with
                // too many elements above it, it and the threshold above bracket the key search
                search_hi = order_key(td.w);
                float above = M;  // the threshold above j (none for j = 0: the maximum)
                for (int j = 0; j < 16; ++j) {
                    vec4 cv = j < 4 ? ca : j < 8 ? cb : j < 12 ? cc : cd;
                    vec4 mv = j < 4 ? ma : j < 8 ? mb : j < 12 ? mc : md;
                    vec4 tv = j < 4 ? ta : j < 8 ? tb : j < 12 ? tc : td;
                    float cnt = cv[j & 3];
                    bool by_min = minp && tv[j & 3] <= tm;  // at or below the min_p floor
                    if (by_min && !compact && cnt <= float(CAP)) {
                        compact = true;
                        theta = tv[j & 3];
                    }
                    if (cnt >= float(kk) || (topp && mv[j & 3] >= g_top_p)) {
                        if (!compact && cnt <= float(CAP)) {
                            compact = true;
                            theta = tv[j & 3];
                        }
                        search_lo = order_key(tv[j & 3]);
                        search_hi = j == 0 ? order_key(M) + 1u : order_key(above);
                        lo_mass = mv[j & 3];
                        break;
                    }
                    above = tv[j & 3];
                }
            }

            if (compact) {
                // --- pass 3: the candidates into shared memory ---------------------------------
                if (t == 0u) {
                    cand_count = 0u;
                }
                barrier();
                FOR_EACH_LOGIT({
                    if (l >= theta || n <= CAP) {
                        uint slot = atomicAdd(cand_count, 1u);
                        cand_key[slot] = order_key(l);
                        cand_prob[slot] = exp((l - M) / T) / S;
                        cand_idx[slot] = e;
                    }
                })
                barrier();
                uint C = cand_count;

                // T*: the largest candidate key where pred holds (+1; 0: none, then the smallest)
                uint tkey = 0u;
                if (filtering) {
                    uint best = 0u;
                    uint lowest = 0xFFFFFFFFu;
                    for (uint i = t; i < C; i += WG_SIZE) {
                        uint ki = cand_key[i];
                        float cnt = 0.0;
                        float mass = 0.0;
                        for (uint j = 0u; j < C; ++j) {
                            if (cand_key[j] >= ki) {
                                cnt += 1.0;
                                mass += cand_prob[j];
                            }
                        }
                        if (cnt >= float(kk) || (topp && mass >= g_top_p)) {
                            best = max(best, ki + 1u);
                        }
                        lowest = min(lowest, ki);
                    }
                    uint found = wg_best(best, 0u).x;
                    uint low = ~wg_best(~lowest, 0u).x;
                    tkey = found != 0u ? found - 1u : low;
                }
                tkey = max(tkey, mkey);

                // the walk, in index order, over the kept candidates
                float part = 0.0;
                for (uint i = t; i < C; i += WG_SIZE) {
                    if (cand_key[i] >= tkey) {
                        part += cand_prob[i];
                    }
                }
                float target = u * wg_sum4(vec4(part, 0.0, 0.0, 0.0)).x;
                uint first = NO_INDEX;
                uint last = 0u;  // index + 1 of the last kept candidate
                for (uint i = t; i < C; i += WG_SIZE) {
                    if (cand_key[i] >= tkey) {
                        uint idx = cand_idx[i];
                        float cum = 0.0;
                        for (uint j = 0u; j < C; ++j) {
                            if (cand_key[j] >= tkey && cand_idx[j] <= idx) {
                                cum += cand_prob[j];
                            }
                        }
                        if (cum > target) {
                            first = min(first, idx);
                        }
                        last = max(last, idx + 1u);
                    }
                }
                uint f = wg_best(0u, first).y;
                uint lk = wg_best(last, 0u).x;
                token = f != NO_INDEX ? f : (lk > 0u ? lk - 1u : 0u);
            } else {
                // --- many candidates: T* by a 16-way search over the order keys --------------
                // Invariant: pred(lo) holds and T* < hi. A pass counts the elements above the
                // pivots lo + j * step (j = 1..15, step = ceil((hi - lo) / 16)) and moves lo to the
                // highest pivot below hi where pred holds: 16 times narrower a pass.
                uint lo = search_lo;
                uint hi = search_hi;
                float kept_mass = lo_mass;  // mass(l >= lo)
                if (filtering) {
                    while (hi - lo > 1u) {
                        uint span = hi - lo;
                        uint step = span / 16u + (span % 16u != 0u ? 1u : 0u);
                        uint floor1 = lo + step;  // pivot 1: below it nothing counts
                        vec4 ca = vec4(0.0), cb = vec4(0.0), cc = vec4(0.0), cd = vec4(0.0);
                        vec4 ma = vec4(0.0), mb = vec4(0.0), mc = vec4(0.0), md = vec4(0.0);
                        FOR_EACH_LOGIT({
                            uint key = order_key(l);
                            if (key >= floor1) {
                                float b = float(min((key - lo) / step, 15u));  // pivots at or below key
                                float pr = exp((l - M) / T) / S;
                                vec4 ga = vec4(greaterThanEqual(vec4(b), vec4(1.0, 2.0, 3.0, 4.0)));
                                vec4 gb = vec4(greaterThanEqual(vec4(b), vec4(5.0, 6.0, 7.0, 8.0)));
                                vec4 gc = vec4(greaterThanEqual(vec4(b), vec4(9.0, 10.0, 11.0, 12.0)));
                                vec4 gd = vec4(greaterThanEqual(vec4(b), vec4(13.0, 14.0, 15.0, 16.0)));
                                ca += ga;
                                cb += gb;
                                cc += gc;
                                cd += gd;
                                ma += ga * pr;
                                mb += gb * pr;
                                mc += gc * pr;
                                md += gd * pr;
                            }
                        })
                        ca = wg_sum4(ca);
                        cb = wg_sum4(cb);
                        cc = wg_sum4(cc);
                        cd = wg_sum4(cd);
                        ma = wg_sum4(ma);
                        mb = wg_sum4(mb);
                        mc = wg_sum4(mc);
                        md = wg_sum4(md);
                        uint jbest = 0u;
                        for (uint j = 1u; j < 16u && j * step < span; ++j) {
                            uint q = j - 1u;
                            vec4 cv = q < 4u ? ca : q < 8u ? cb : q < 12u ? cc : cd;
                            vec4 mv = q < 4u ? ma : q < 8u ? mb : q < 12u ? mc : md;
                            if (cv[q & 3u] >= float(kk) || (topp && mv[q & 3u] >= g_top_p)) {
                                jbest = j;
                                kept_mass = mv[q & 3u];
                            }
                        }
                        if (jbest < 15u && (jbest + 1u) * step < span) {
                            hi = lo + (jbest + 1u) * step;  // pred fails at the next pivot
                        }
                        lo += jbest * step;
                    }
                }
                uint tkey = lo;
                if (mkey > tkey) {  // the min_p floor is higher: the mass above it, in one more pass
                    tkey = mkey;
                    float part = 0.0;
                    for (uint w0 = 0u; w0 < n; w0 += g_win) {
                        if (g_multiwin) {
                            load_window(w0);
                        }
                        uint w1 = min(n, w0 + g_win);
                        for (uint e = w0 + t; e < w1; e += WG_SIZE) {
                            float l = penalise(logits[g_row + e], e, w0);
                            part += l >= tm ? exp((l - M) / T) / S : 0.0;
                        }
                    }
                    kept_mass = wg_sum4(vec4(part, 0.0, 0.0, 0.0)).x;
                }

                // the walk over the whole vocabulary, tile by tile: invocation t owns ids
                // tb + 8t .. tb + 8t + 7; P is the kept mass of the tiles before
                float target = u * kept_mass;
                float P = 0.0;
                uint chosen = NO_INDEX;
                uint last = 0u;  // index + 1 of the last kept id seen
                bool crossed = false;
                for (uint w0 = 0u; w0 < n && !crossed; w0 += g_win) {
                    if (g_multiwin) {
                        load_window(w0);
                    }
                    uint w1 = min(n, w0 + g_win);
                    for (uint tb = w0; tb < w1; tb += TILE) {
                        uint e0 = tb + 8u * t;
                        float pr[8];
                        [[unroll]] for (uint j = 0u; j < 8u; ++j) {
                            pr[j] = e0 + j < w1 ? logits[g_row + e0 + j] : 0.0;
                        }
                        float mine = 0.0;
                        [[unroll]] for (uint j = 0u; j < 8u; ++j) {
                            uint e = e0 + j;
                            float l = penalise(pr[j], e, w0);
                            bool kept = e < w1 && order_key(l) >= tkey;
                            pr[j] = kept ? exp((l - M) / T) / S : 0.0;
                            mine += pr[j];
                            last = kept ? e + 1u : last;
                        }
                        float tile_mass;
                        float before = P + wg_scan(mine, tile_mass);
                        if (P + tile_mass > target) {
                            // the target is in this tile: the first of its ids past it
                            float run = before;
                            uint found = NO_INDEX;
                            [[unroll]] for (uint j = 0u; j < 8u; ++j) {
                                run += pr[j];
                                if (found == NO_INDEX && pr[j] > 0.0 && run > target) {
                                    found = e0 + j;
                                }
                            }
                            chosen = wg_best(0u, found).y;
                            crossed = true;
                            break;
                        }
                        P += tile_mass;
                    }
                }
                uint f = chosen;
                uint lk = wg_best(last, 0u).x;
                token = f != NO_INDEX ? f : (lk > 0u ? lk - 1u : 0u);
            }
        }

        if (t == 0u) {
            out_[r] = token;
            if (hist_len < p.hist_cap) {
                history[g_hist + hist_len] = token;
            }
        }
        barrier();  // shared memory is reused by the next row
    }
}
