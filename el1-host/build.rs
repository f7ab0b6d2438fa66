//! Links the host with its linker script, and embeds the built-in default
//! guest bundle (a cpio archive with `default.vms`) that `cargo xtask build`
//! names in `FERROVISOR_DEFAULT_BUNDLE`; without it the bundle is empty.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    if target.starts_with("aarch64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/../linker/host.ld");
        println!("cargo:rerun-if-changed={dir}/../linker/host.ld");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("default-guests.cpio");
    println!("cargo:rerun-if-env-changed=FERROVISOR_DEFAULT_BUNDLE");
    let bundle = match std::env::var("FERROVISOR_DEFAULT_BUNDLE") {
        Ok(path) if !path.is_empty() => {
            println!("cargo:rerun-if-changed={path}");
            std::fs::read(&path).unwrap_or_else(|e| panic!("FERROVISOR_DEFAULT_BUNDLE={path}: {e}"))
        }
        _ => Vec::new(),
    };
    std::fs::write(&out, bundle).expect("write the default bundle");
}
