//! Compiles `cpp/shim.cpp` (c10d process groups, autocast on any device, memory formats; see its header) against
//! the headers of the libtorch that `torch-sys` links (`LIBTORCH`, which `scripts/setup.sh` sets), and links it with
//! `torch_cpu`/`c10` (libtorch_cuda is opened at run time when a CUDA device is asked for). NCCL support is compiled in when the
//! NCCL and CUDA headers of the torch wheel's packages (`site-packages/nvidia/*/include`) are there ([`lewel_ffi::dist::has_nccl`]).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run scripts/setup.sh first (it writes .cargo/config.toml)");
    };
    let include = libtorch.join("include");
    let lib = libtorch.join("lib");
    assert!(
        include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp").exists(),
        "{} lacks the c10d headers; lewel needs a libtorch with distributed support (the PyPI torch wheel has it)",
        include.display()
    );
    let has_cuda = lib.join("libtorch_cuda.so").exists();
    // The torch wheel's CUDA packages sit beside it: site-packages/nvidia/{cu13,nccl}/include. The CUDA runtime
    // headers need `crt/` and `nv/target` too (nvidia-cuda-crt and nvidia-cuda-cccl, which scripts/setup.sh adds).
    let nvidia = libtorch.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let cuda_include = find_dir(&nvidia, &["cuda_runtime_api.h", "crt/host_config.h", "nv/target"]);
    let nccl_include = find_dir(&nvidia, &["nccl.h"]);
    let nccl = has_cuda && cuda_include.is_some() && nccl_include.is_some();
    if has_cuda && !nccl {
        println!(
            "cargo:warning=building without NCCL: no CUDA/NCCL headers under {} (run scripts/setup.sh)",
            nvidia.display()
        );
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("cpp/shim.cpp")
        .include("cpp") // our Gloo declarations (cpp/gloo/README.md)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .opt_level(2)
        .warnings(false);
    if nccl {
        build.define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("LEWEL_WITH_NCCL", None);
        for d in cuda_include.iter().chain(nccl_include.iter()) {
            build.include(d);
        }
    }
    build.compile("lewel_shim");

    // libtorch_cuda is opened at run time, when a CUDA device is asked for (`lewel_ffi::cuda::load`), not linked.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The `include` folder of a package under `root` (`nvidia/<pkg>/include`) that holds all of `files`.
fn find_dir(root: &Path, files: &[&str]) -> Option<PathBuf> {
    let pkgs = std::fs::read_dir(root).ok()?;
    pkgs.flatten().map(|p| p.path().join("include")).find(|inc| files.iter().all(|f| inc.join(f).exists()))
}
