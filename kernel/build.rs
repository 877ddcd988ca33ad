//! Hands the kernel binary its linker script (`linker.ld`), which places the
//! image at 1 MiB and emits the PVH note as a `PT_NOTE` program header.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("cargo always sets CARGO_MANIFEST_DIR"),
    );
    let script = manifest_dir.join("linker.ld");
    println!("cargo:rustc-link-arg-bin=kernel=-T{}", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
}
