"""Stage 2: the torch modules that get exported: ImageReward on transformers' BLIP (with its
original-checkpoint key converter) and the wrappers that give every component its spec's signature."""
