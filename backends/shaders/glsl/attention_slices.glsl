// The decode forms (attention.comp with DECODE_ROPE_KV, decode_attention_gqa.comp): merging a
// (row, head)'s key slices, included after the kernel's shared declarations (part, part_l, prob,
// arrived) and SUM_GROUPS helpers.
//
// Each slice of (row r, head h) leaves (m, l, its unnormalised output) in scratch and counts
// itself in; the last of the `live` slices to arrive (no workgroup waits for another) merges them
// as the online softmax does, writes out and zeroes what it read. Scratch per (row, head):
// [count, then per slice m, l, head_dim outputs]. A workgroup serving several heads counts itself
// in on its first head's count only.

// the first word of (row r, head h)'s scratch, and of this workgroup's slice there
uint scratch_head(uint r, uint h) {
    return (r * p.n_heads + h) * (1u + SLICES * (2u + p.head_dim));
}

uint scratch_slice(uint r, uint h) {
    return scratch_head(r, h) + 1u + gl_WorkGroupID.y * (2u + p.head_dim);
}

// Counts this slice in on (row r, head h)'s count once its results are written: whether it is
// the last of the `live` slices (the one to merge; it sees what the others wrote).
bool last_to_arrive(uint r, uint h, uint live) {
    memoryBarrierBuffer();  // the slice's results are visible before its count
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        arrived = atomicAdd(scratch[scratch_head(r, h)], 1u);
    }
    barrier();
    if (arrived != live - 1u) {
        return false;
    }
    memoryBarrierBuffer();
    return true;
}

// Merges the `live` slices of (row r, head h) into out and zeroes their scratch (not the count
// of any head but h's).
void merge_slices(uint r, uint h, uint live) {
    uint t = gl_LocalInvocationIndex;
    uint hd = p.head_dim;
    uint hs = scratch_head(r, h);
    // every slice's maximum and sum at once, an invocation each (live <= SLICES <= WG_SIZE)
    uint stride = 2u + hd;
    if (t < live) {
        part_l[t] = uintBitsToFloat(scratch[hs + 1u + t * stride]);
        prob[t] = uintBitsToFloat(scratch[hs + 2u + t * stride]);
    }
    barrier();
    float mm = LOWEST;
    for (uint s = 0u; s < live; ++s) {
        mm = max(mm, part_l[s]);
    }
    float lsum = 0.0;
    for (uint s = 0u; s < live; ++s) {
        lsum += prob[s] * exp(part_l[s] - mm);
    }
    // then their outputs, rescaled, as many slices at a time as `part` holds (WG_SIZE * UE >=
    // 256 >= head_dim), their loads in flight together; the sums in o (element t + k * WG_SIZE
    // of the head: WG_SIZE >= MAX_HEAD_DIM / 4)
    float o[4] = float[4](0.0, 0.0, 0.0, 0.0);
    uint batch = (WG_SIZE * UE) / hd;
    for (uint s0 = 0u; s0 < live; s0 += batch) {
        uint count = min(batch, live - s0) * hd;
        for (uint i0 = t; i0 < count; i0 += 4u * WG_SIZE) {
            float v[4];
            [[unroll]] for (uint k = 0u; k < 4u; ++k) {
                uint i = min(i0 + k * WG_SIZE, count - 1u);
                v[k] = uintBitsToFloat(scratch[hs + 1u + (s0 + i / hd) * stride + 2u + i % hd]);
            }
            [[unroll]] for (uint k = 0u; k < 4u; ++k) {
                uint i = i0 + k * WG_SIZE;
                if (i < count) {
                    part[i] = v[k] * exp(part_l[s0 + i / hd] - mm);
                }
            }
        }
        barrier();
        [[unroll]] for (uint k = 0u; k < 4u; ++k) {
            uint d = t + k * WG_SIZE;
            for (uint i = d; i < count && d < hd; i += hd) {
                o[k] += part[i];
            }
        }
        barrier();
    }
    [[unroll]] for (uint k = 0u; k < 4u; ++k) {
        uint d = t + k * WG_SIZE;
        if (d < hd) {
            out_[(r * p.n_heads + h) * hd + d] = lsum > 0.0 ? o[k] / lsum : 0.0;  // no key at all: zeros
        }
    }
    // every read of scratch, part_l and prob came before the loop's last barrier
    for (uint i = t; i < live * (2u + hd); i += WG_SIZE) {
        scratch[hs + 1u + i] = 0u;
    }
    if (t == 0u) {
        scratch[hs] = 0u;
    }
}

// attention.comp: (row r, head h)'s slice (maximum m, sum l, its groups' accumulators in `part`)
// into scratch, merged by the last slice to arrive.
void combine_slices(uint h, uint r, uint live, float m, float l) {
    uint t = gl_LocalInvocationIndex;
    uint hd = p.head_dim;
    uint G = WG_SIZE / (hd / UE);
    uint mine = scratch_slice(r, h);
    for (uint d = t; d < hd; d += WG_SIZE) {
        scratch[mine + 2u + d] = floatBitsToUint(sum_part(d, hd, G));
    }
    if (t == 0u) {
        scratch[mine] = floatBitsToUint(m);
        scratch[mine + 1u] = floatBitsToUint(l);
    }
    if (last_to_arrive(r, h, live)) {
        merge_slices(r, h, live);
    }
}
