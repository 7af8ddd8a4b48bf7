# kiln: `make demo` sets everything up and runs an untrusted build in a microVM;
# `make test` runs the whole test suite. Both install what they need first.

AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT        := target/$(AGENT_TARGET)/release/kiln-agent
KILN         := target/release/kiln
export CARGO_TERM_PROGRESS_WHEN = never

.PHONY: all deps build agent doctor demo test lint fuzz clean

all: build

deps:
	@sh scripts/install-deps.sh

build: deps
	cargo build --release --locked -p kiln-cli
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p kiln-agent --target $(AGENT_TARGET)

# The end of every set-up: kiln checks the host (QEMU and its version, the frozen-RAM mapping,
# confinement, the guest kernel) and stops the make on any failure it reports.
doctor: build
	$(KILN) doctor

# The untrusted sample build: a small C project, copied into a fresh VM of the `base`
# template, built and tested there; the VM is destroyed afterwards.
demo: doctor
	$(KILN) template build base
	@echo "== host kernel:  $$(uname -r)"
	@echo "== guest kernel: $$($(KILN) run --template base -- uname -r)"
	$(KILN) run --template base --timeout 300 --copy examples/hello-c:/src --workdir /src -- sh -c 'make && make test'
	@echo "== the same project as an untrusted CI job: a two-cell matrix, an artifact, signed provenance"
	rm -rf .kiln-demo-out
	$(KILN) ci run --repo examples/hello-c --ref HEAD --timeout 300 \
	  --build 'make test && mkdir -p dist && cp hello dist/hello-$$V' \
	  --matrix V=1,2 --artifact 'dist/*' --out .kiln-demo-out
	$(KILN) verify --provenance .kiln-demo-out/V=1/provenance.intoto.json --artifact .kiln-demo-out/V=1/artifacts/dist/hello-1

# Everything: unit tests, then integration tests that boot real VMs (templates are built
# once and cached by digest under KILN_HOME). The tests that need QEMU or built templates are
# #[ignore]d for a plain `cargo test`; --include-ignored runs them here.
test: doctor
	$(KILN) template build tiny
	$(KILN) template build base
	cargo test --release --locked --workspace -- --include-ignored --test-threads=2

# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, nightly toolchain) of the host-side
# decoders and the API's request parsing, FUZZ_SECS seconds per target. Not part of `make test`.
FUZZ_SECS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in guest_frames tunnel_frames api_bodies; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

lint:
	cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	cargo clean
