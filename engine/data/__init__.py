"""Data: the NIH ChestX-ray14 layout and its patient splits (`nih`), where a run's data comes from and
whether it is cached (`dataset`), the decoded uint8 cache (`cache`), the synthetic demo phantoms
(`demo`), PNG/JPEG/DICOM decoding as training sees it (`images`), and the batches a training or
evaluation pass reads, a step ahead in a thread (`batches`). Only `batches` imports torch.
"""
