"""Shared machinery of the locate-and-edit editors (ROME, MEMIT, AlphaEdit, PRUNE).

- `hooks`: read and write hidden states of named modules;
- `keys`: fact-token positions and keys (inputs of the MLP output projection);
- `statistics`: key second moments C = E[k k^T] per layer, cached content-addressed;
- `context`: context prefixes sampled from the unedited model;
- `target_vectors`: the target-vector optimisation for a whole batch at once;
- `spread`: MEMIT's layer loop, shared by MEMIT and AlphaEdit;
- `weights`: weight orientation per family and updates packed as (low-rank) delta tensors.
"""
