# Convenience targets. The benchmark harness is bench/run.sh (docs/benchmarks.md).

.PHONY: bench bench-quick bench-profile

# The full side-by-side run: overhead, isolation and weights, 3 repetitions
# each (~35 min on 2 cores). Tables in bench/out/, pictures in docs/img/.
bench:
	bench/run.sh

# One short repetition of everything, to check the harness works.
bench-quick:
	bench/run.sh --quick --no-img

# CPU and allocation profiles of the sidecar and the bare ReverseProxy.
bench-profile:
	bench/run.sh --profile
