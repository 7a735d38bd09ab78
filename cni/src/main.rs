//! vpc-cni: the CNI plugin kubelet's runtime execs for every pod sandbox.
//!
//! Owns: the CNI protocol (CNI_* environment, config on stdin, result or error JSON on stdout),
//! pod veth wiring and host routes/rules. Talks only to ipamd over its unix socket.
//!
//! Must not touch: the AWS SDK or any EC2/IMDS call (it must stay small and start fast), and any
//! state between calls other than what the kernel and ipamd hold.
//!
//! So far it answers `VERSION`; ADD/DEL/CHECK/GC/STATUS arrive with the vpc-cni issue and answer
//! a spec error until then.

use std::io::Write;

const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("vpc-cni {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if cmd == "VERSION" {
        let v = serde_json::json!({ "cniVersion": "1.1.0", "supportedVersions": SUPPORTED });
        let _ = writeln!(out, "{v}");
        return;
    }
    // CNI spec error code 4: invalid configuration / unsupported operation for now.
    let e = serde_json::json!({
        "cniVersion": "1.1.0",
        "code": 4,
        "msg": format!("CNI_COMMAND {cmd:?} is not supported by this build of vpc-cni"),
    });
    let _ = writeln!(out, "{e}");
    std::process::exit(1);
}
