"""Defaults shared by several stages, declared once. Stage configs and help texts read them here."""

MAX_LENGTH = 128  # tokens per (question, sentence) pair, special tokens included
SEED = 0  # data split, fine-tuning and random benchmark inputs
PERCENTILE = 99.99  # --method percentile
PEG_GROUPS = 4  # --method peg
PEG_LAYOUT = "scaled"  # --method peg: how the QDQ graph writes the groups (`gathered` for TensorRT)
PEG_AUTO_NOISE_FACTOR = 2.0  # --groups auto: expected rounding noise at most this times per-channel's
PEG_AUTO_MAX_GROUPS = 8  # --groups auto: never more groups than this (the study's largest K)
PEG_GROUPING = "optimal"  # --method peg: group boundaries that minimise the expected rounding noise
SMOOTH_ALPHA = 0.5  # SmoothQuant-style migration strength (the study's --smooth configurations)
BASE_METHOD = "max"  # --method auto: the ranges of the points that stay quantized
SEARCH_MAX_DROP = 0.5  # --method auto: accuracy points below FP32 on the tuning pairs
SEARCH_CONFIDENCE = 0.9  # --method auto: one-sided confidence that the tuning drop is within --max-drop
SEARCH_POINTS_PER_TASK = 16  # --method auto on another executor: one-point evaluations per task, at most
DEPLOY_MAX_DROP = 1.0  # qtool reproduce: accuracy budget of the "what to deploy" advice
OUTLIER_RATIO = 4.0  # --mixed-precision outliers: max |x| at least this many times p99.99
TRT_FP16 = True  # qtool build --backend trt: float parts of the graph in FP16 (strongly typed), else FP32
TRT_TF32 = True  # qtool build --backend trt: FP32 layers may use TF32 (TensorRT's own default)
ORT_INT8_KERNELS = "auto"  # qtool build --backend ort: u8s8 where it does not saturate (or 7-bit weights), else u8u8
TRT_QUANTIZE_HEAD = False  # qtool build --backend trt: keep Q/DQ on the pooler/classifier GEMVs
COMPARISON_BATCHES = (1, 8)  # qtool reproduce: batch sizes of the interleaved run of each tool's fastest configuration
AHEAD_MARGIN = 0.10  # qtool reproduce: how much faster than the fastest peer counts as ahead (beyond the spread too)
STUDY_BACKENDS = ("openvino",)  # qtool reproduce: CPU backends besides ONNX Runtime it deploys on (NAME@BACKEND rows)
STUDY_WARMUP = 5  # qtool reproduce: untimed runs before each latency measurement
STUDY_ITERATIONS = 30  # qtool reproduce: timed runs of each latency measurement (their p50 is reported)
