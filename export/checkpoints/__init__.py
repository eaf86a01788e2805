"""Stage 1: checkpoints in. Sources and their loading, the student kinds (full UNets and fused LoRAs),
hub ids, the random-weight presets written in the real formats, and the tokenizer files."""
