//! The plugin speaks the CNI protocol for VERSION and refuses what it does not do yet with a
//! spec error object on stdout and a non-zero exit.

use std::process::Command;

fn run(cmd: &str) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_vpc-cni"))
        .env("CNI_COMMAND", cmd)
        .output()
        .expect("exec vpc-cni");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).expect("JSON on stdout"),
    )
}

#[test]
fn version_lists_the_supported_spec_versions() {
    let (ok, v) = run("VERSION");
    assert!(ok);
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn unsupported_commands_get_a_spec_error() {
    let (ok, v) = run("ADD");
    assert!(!ok);
    assert_eq!(v["code"], 4);
    assert!(v["msg"].as_str().is_some_and(|m| m.contains("ADD")));
}
