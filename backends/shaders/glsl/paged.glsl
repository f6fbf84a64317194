// The paged KV cache's indirection (shaderbay.kernels: kv_write, attention, decode_attention).
// The including kernel declares `block_tables` and the push constants block_size,
// blocks_per_seq, n_blocks and n_seqs.
#ifndef PAGED_GLSL
#define PAGED_GLSL

#define NO_ROW 0xFFFFFFFFu

// The block of slot `seq` holding logical position `pos`, or NO_ROW (past the slot's capacity,
// an invalid table entry, a slot >= n_seqs).
uint block_of(uint seq, uint pos) {
    uint i = pos / p.block_size;
    if (seq >= p.n_seqs || i >= p.blocks_per_seq) {
        return NO_ROW;
    }
    uint b = block_tables[seq * p.blocks_per_seq + i];
    return b < p.n_blocks ? b : NO_ROW;
}

// The cache row of logical position `pos` of slot `seq`, or NO_ROW.
uint cache_row(uint seq, uint pos) {
    uint b = block_of(seq, pos);
    return b == NO_ROW ? NO_ROW : b * p.block_size + pos % p.block_size;
}

#endif  // PAGED_GLSL
