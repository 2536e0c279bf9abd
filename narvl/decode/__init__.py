"""Decoding: CTC collapse and prefix beam search for the NAR model (`narvl.decode.ctc`), the decoding benchmark
(`narvl.decode.bench`) and `narvl decode` (`narvl.decode.run`). AR generation is `ARModel.generate`."""
