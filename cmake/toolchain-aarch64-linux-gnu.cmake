# CMake toolchain file: cross-compile cawait for AArch64 Linux with Debian's
# cross toolchain (packages gcc-aarch64-linux-gnu libc6-dev-arm64-cross) and
# run the results under qemu-user (package qemu-user).
#
#   cmake -S . -B build-aarch64 \
#         -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64-linux-gnu.cmake
#
# scripts/aarch64.sh does this, builds and runs the tests under qemu.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CA_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${CA_CROSS_TRIPLE}-gcc)
# .S files go through the C compiler driver (preprocessor + gas).
set(CMAKE_ASM_COMPILER ${CA_CROSS_TRIPLE}-gcc)
set(CMAKE_AR ${CA_CROSS_TRIPLE}-ar CACHE FILEPATH "")
set(CMAKE_RANLIB ${CA_CROSS_TRIPLE}-ranlib CACHE FILEPATH "")
set(CMAKE_STRIP ${CA_CROSS_TRIPLE}-strip CACHE FILEPATH "")

# Headers and libraries come from the target sysroot only; programs (cmake's
# own helpers, pkg-config...) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${CA_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# try_run() and ctest run target binaries through qemu-user; -L points the
# emulator at the cross sysroot's dynamic loader and libc.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;/usr/${CA_CROSS_TRIPLE}")
