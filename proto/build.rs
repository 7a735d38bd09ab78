fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/ipam.proto"], &["proto"])?;
    // The CSI spec only for the crates that serve it (feature `csi`): vpc-cni stays lean.
    if std::env::var_os("CARGO_FEATURE_CSI").is_some() {
        tonic_prost_build::configure().compile_protos(&["proto/csi.proto"], &["proto"])?;
    }
    Ok(())
}
