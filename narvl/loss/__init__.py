"""Training objectives, separate from the models (fairseq NAT style): each returns (loss, stats).

    narvl.loss.qctc.qctc_loss   Q-CTC for the NAR model (CTC over the N query slots)
    narvl.loss.ar.ar_loss       label-smoothed teacher-forced cross-entropy for the AR baseline
"""
