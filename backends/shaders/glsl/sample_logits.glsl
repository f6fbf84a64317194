// sample.comp's penalised logits and its first passes over them (included after its shared
// declarations and reductions; every invocation of the workgroup calls these, row by row).

// --- the penalised logits -----------------------------------------------------------------
// The bitmap covers the window [w0, w0 + BITMAP_IDS) of ids. A vocabulary larger than that
// with a penalty (`multiwin`) walks every pass window by window, refilling the bitmap from
// the history at each window (all invocations: barriers); otherwise it is filled once.

uint g_n;
uint g_row;   // the row's first logit
uint g_hist;  // its slot's history row
float g_pen;  // its slot's settings
float g_temp;
float g_top_p;
float g_min_p;
uint g_used;
bool g_penalty;
bool g_multiwin;
uint g_win;  // window length: BITMAP_IDS with multiwin, else n (one window)

void load_window(uint w0) {
    uint t = gl_LocalInvocationIndex;
    barrier();  // every invocation is done with the previous window
    for (uint i = t; i < BITMAP_WORDS; i += WG_SIZE) {
        bitmap[i] = 0u;
    }
    barrier();
    for (uint i = t; i < g_used; i += WG_SIZE) {
        uint id = history[g_hist + i];
        if (id < g_n && id >= w0 && id - w0 < BITMAP_IDS) {
            atomicOr(bitmap[(id - w0) >> 5], 1u << ((id - w0) & 31u));
        }
    }
    barrier();
}

// the logit l of id e (in the window starting at w0), penalised
float penalise(float l, uint e, uint w0) {
    if (g_penalty) {
        uint i = e - w0;
        if (((bitmap[i >> 5] >> (i & 31u)) & 1u) != 0u) {
            l = l > 0.0 ? l / g_pen : l * g_pen;
        }
    }
    return l;
}

// the penalised logits of ids eb + j * WG_SIZE, j < 4 (those >= w1: 0), loaded together
vec4 load4(uint eb, uint w0, uint w1) {
    uint e1 = eb + WG_SIZE;
    uint e2 = eb + 2u * WG_SIZE;
    uint e3 = eb + 3u * WG_SIZE;
    vec4 l = vec4(eb < w1 ? logits[g_row + eb] : 0.0, e1 < w1 ? logits[g_row + e1] : 0.0,
                  e2 < w1 ? logits[g_row + e2] : 0.0, e3 < w1 ? logits[g_row + e3] : 0.0);
    if (g_penalty) {
        l.x = eb < w1 ? penalise(l.x, eb, w0) : 0.0;
        l.y = e1 < w1 ? penalise(l.y, e1, w0) : 0.0;
        l.z = e2 < w1 ? penalise(l.z, e2, w0) : 0.0;
        l.w = e3 < w1 ? penalise(l.w, e3, w0) : 0.0;
    }
    return l;
}

float key_value(uint key) {  // the inverse of order_key (for keys of numbers)
    return uintBitsToFloat((key & 0x80000000u) != 0u ? (key & 0x7FFFFFFFu) : ~key);
}

uint hash32(uint x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

// Every penalised logit l of the row, with its id e, handed to BLOCK (a braced block): window by
// window (load_window's barriers: every invocation runs it), ids e = w0 + t + j * WG_SIZE, eight
// loads issued together a round (the loads are latency-bound otherwise). BLOCK may `break` out of
// the current round only; it must not hold a comma outside parentheses (a macro argument).
#define FOR_EACH_LOGIT(BLOCK)                                                \
    for (uint w0 = 0u; w0 < g_n; w0 += g_win) {                              \
        if (g_multiwin) {                                                    \
            load_window(w0);                                                 \
        }                                                                    \
        uint w1 = min(g_n, w0 + g_win);                                      \
        for (uint eb = w0 + t; eb < w1; eb += 8u * WG_SIZE) {                \
            vec4 la = load4(eb, w0, w1);                                     \
            vec4 lb = load4(eb + 4u * WG_SIZE, w0, w1);                      \
            [[unroll]] for (uint j4 = 0u; j4 < 8u; ++j4) {                   \
                uint e = eb + j4 * WG_SIZE;                                  \
                if (e >= w1) {                                               \
                    break;                                                   \
                }                                                            \
                float l = j4 < 4u ? la[j4 & 3u] : lb[j4 & 3u];               \
                BLOCK                                                        \
            }                                                                \
        }                                                                    \
    }

// temperature <= 0: the smallest index of the largest penalised logit
uint greedy_token() {
    uint t = gl_LocalInvocationIndex;
    uint bk = 0u;
    uint bi = NO_INDEX;
    FOR_EACH_LOGIT({
        uint k = order_key(l);
        if (k > bk || (k == bk && e < bi)) {
            bk = k;
            bi = e;
        }
    })
    uvec2 best = wg_best(bk, bi);
    return best.y == NO_INDEX ? 0u : best.y;
}

// pass 1: (M, S), the maximum and S = sum exp((l - M) / T) of the penalised logits
vec2 max_and_sum(float T) {
    uint t = gl_LocalInvocationIndex;
    float m = LOWEST;
    float s = 0.0;
    FOR_EACH_LOGIT({
        if (l > m) {
            s = s * exp((m - l) / T) + 1.0;
            m = l;
        } else {
            s += exp((l - m) / T);
        }
    })
    float M = key_value(wg_best(order_key(m), 0u).x);
    float S = wg_sum4(vec4(s * exp((m - M) / T), 0.0, 0.0, 0.0)).x;
    return vec2(M, S);
}
