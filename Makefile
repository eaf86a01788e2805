# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# shapes: the trained world (committed weights); tiny / small: random weights in the real formats.
PRESET ?= shapes

.PHONY: all venv system-deps test test-fast mutate demo serve bench bench-shapes perf export train-world gpu-smoke clean

all: test

# torch first and pinned: a local CPU wheel. Unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# perf_analyzer (shipped in the tritonclient wheel) links against Debian's libb64; the gateway
# (export/gateway) and the local fleet (benchmarks/fleet.py) are Debian's HAProxy. kubectl (its
# built-in kustomize renders export/deploy/) comes with the machine image: Debian's own
# kubernetes-client is 1.20, whose kustomize predates the kustomization fields the overlays use.
system-deps:
	@{ ldconfig -p | grep -q libb64.so.0d && command -v haproxy >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libb64-0d haproxy >/dev/null; \
	  else echo "perf_analyzer, the gateway and the fleet need: sudo apt-get install -y libb64-0d haproxy"; fi; }
	@command -v kubectl >/dev/null || echo "kubectl not found: tests/test_deploy_manifests.py renders export/deploy/ with kubectl kustomize (kubectl >= 1.27)"

test: venv system-deps
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not server and not slow"

# Mutation testing of bll_python/ (mutmut, config in pyproject.toml) against the fast tests; CPU-heavy,
# so niced. Not part of `make test`. Prints the score and lists the surviving mutants. All of
# bll_python/ is ~2250 mutants (hours on 2 cores); MUTANTS picks some, with mutmut's name patterns:
#   make mutate MUTANTS="bll_python.settings.* bll_python.serving.xǁBatchRunnerǁrun__mutmut_*"
MUTATE_NICE ?= 19
MUTANTS ?=
mutate: venv
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	nice -n $(MUTATE_NICE) $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python -m tests.mutation_report

export: venv
	$(BIN)/python -m export --preset $(PRESET)

demo: venv system-deps
	$(BIN)/python -m clients.demo --preset $(PRESET)

# GATEWAY_PORT=8080 also runs the HAProxy gateway (export/SECURITY.md) in front of the server.
GATEWAY_PORT ?=
serve: venv system-deps
	$(BIN)/python -m export.launcher --preset $(PRESET) $(if $(GATEWAY_PORT),--gateway-port $(GATEWAY_PORT))

bench: venv system-deps
	$(BIN)/python -m benchmarks.run

# The paper's tables in miniature on the trained shapes world, served through Triton.
bench-shapes: venv
	$(BIN)/python -m benchmarks.miniature

# Retrain the shapes world from scratch (about an hour of CPU; resumes where it stopped).
train-world: venv
	nice -n 19 $(BIN)/python -m export.world train

# perf_analyzer by hand, its libraries found: make perf ARGS="-m adaptive_diffusion -u 127.0.0.1:8001 -i grpc ..."
perf: venv system-deps
	$(BIN)/python -m benchmarks.perf_analyzer $(ARGS)

gpu-smoke: venv
	bash benchmarks/gpu_smoke.sh

clean:
	rm -rf artifacts
