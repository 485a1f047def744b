//! Link a guest as a static, freestanding ELF at 0x100000 with tests/guest/link.ld. The
//! conformance guest builds with this script too (`build = "../guest/build.rs"`): same entry
//! stub, same layout.
use std::env;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    // Relative to either guest's directory (tests/guest or tests/conformance-guest).
    let guest = format!("{dir}/../guest");
    println!("cargo:rerun-if-changed=../guest/build.rs");
    println!("cargo:rerun-if-changed=../guest/link.ld");
    for arg in [
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--no-dynamic-linker",
        "-Wl,-z,max-page-size=4096",
        "-Wl,--build-id=none",
        &format!("-Wl,-T,{guest}/link.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
