# Thin wrapper over CMake.  `make demo` and `make test` work on a fresh
# Debian 12 machine: they install what the build needs first.
BUILD      ?= build
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CC         ?= cc
PREFIX     ?= /usr/local
CMAKE_ARGS ?=

.PHONY: all deps build test demo bench asan tsan clang ucontext minimal valgrind aarch64 install format clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_ARGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure

demo: build
	@scripts/demo.sh $(BUILD)

bench:
	@scripts/deps.sh --bench
	$(MAKE) build
	@bench/run.sh $(BUILD)

# AddressSanitizer + UndefinedBehaviorSanitizer build and tests.
asan: deps
	cmake -S . -B build-asan -DCAWAIT_SANITIZE=ON -DCAWAIT_BENCH=OFF $(CMAKE_ARGS)
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure

# ThreadSanitizer (clang): the thread-safe call queue and its wake-up.
tsan: deps
	CC=clang cmake -S . -B build-tsan -DCMAKE_C_FLAGS="-fsanitize=thread -g -O1" \
	  -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCAWAIT_BENCH=OFF -DCAWAIT_EXAMPLES=OFF $(CMAKE_ARGS)
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && CAWAIT_TEST_LIGHT=1 TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure

# The core alone: no libcurl, c-ares or OpenSSL (each is optional at build
# time); the HTTP, DNS and TLS entry points then give their "built without"
# errors, which the tests check.
minimal: deps
	cmake -S . -B build-minimal -DCAWAIT_WITH_CURL=OFF -DCAWAIT_WITH_CARES=OFF \
	  -DCAWAIT_WITH_OPENSSL=OFF -DCAWAIT_BENCH=OFF -DCAWAIT_EXAMPLES=OFF $(CMAKE_ARGS)
	cmake --build build-minimal -j $(JOBS)
	cd build-minimal && CAWAIT_TEST_LIGHT=1 ctest --output-on-failure

# The same build with clang.
# clang at -O3 (Release): the other builds are -O2, and some warnings
# (format truncation, uninitialised use) only show at higher optimisation.
clang: deps
	CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build build-clang -j $(JOBS)
	cd build-clang && ctest --output-on-failure

# The portable ucontext context switch instead of the assembly one, built
# by gcc at -O3 (Release) for the same reason as the clang build.
ucontext: deps
	cmake -S . -B build-uc -DCAWAIT_CORO=ucontext -DCAWAIT_BENCH=OFF -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build build-uc -j $(JOBS)
	cd build-uc && CAWAIT_TEST_LIGHT=1 ctest --output-on-failure

# Core tests under valgrind memcheck: no errors, no leaks.
valgrind: build
	@scripts/valgrind.sh $(BUILD)

# AArch64 cross build, coroutine and loop tests under qemu-user.
aarch64:
	@scripts/deps.sh --cross
	@scripts/aarch64.sh

install: build
	cmake --install $(BUILD)

format:
	clang-format -i include/*.h src/*/*.c src/*/*.h tests/*.c tests/*.h bench/*.c examples/*.c

clean:
	rm -rf $(BUILD) build-asan build-tsan build-clang build-uc build-minimal build-aarch64
