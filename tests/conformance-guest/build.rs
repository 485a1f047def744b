//! Link the guest as a static, freestanding ELF at 0x100000 with the test guest's linker
//! script (same entry stub, same layout).
use std::env;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../guest/link.ld");
    println!("cargo:rerun-if-changed=../guest/src/entry.rs");
    for arg in [
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--no-dynamic-linker",
        "-Wl,-z,max-page-size=4096",
        "-Wl,--build-id=none",
        &format!("-Wl,-T,{dir}/../guest/link.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
