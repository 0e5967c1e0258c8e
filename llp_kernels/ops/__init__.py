"""The public ops, one module each: the op's ``torch.library`` schema and fake, its
autograd, its reference implementation (the paper's equation in plain PyTorch), the host
rules around its kernels, its argument checks and the limits a backend declares for it.

    aggregation.py   aggregation_loss, aggregation_lse, aggregation_grad (paper eq. 1-2)
    topk.py          topk_similarity: the k largest biased similarities per query
    density.py       local_density (eq. 4), over the top-k kernels
    propagate.py     propagate_labels (eq. 5), over the top-k kernels and the vote
    class_vote.py    class_vote: the vote of eq. 5 (plain PyTorch on every backend)
    bank_update.py   update_memory_bank_ (Wu et al. 2018)
    normalize.py     normalize_rows, normalize_rows_ (in place): the one row normalisation
"""
