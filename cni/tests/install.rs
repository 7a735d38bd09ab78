//! `vpc-cni install`: nothing lands in the host CNI dirs until ipamd says it can serve an ADD; then
//! the binary and the conflist land (atomically, no temp files left), and a re-run is a no-op.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_calls(ipamd: &FakeIpamd) -> usize {
    ipamd.calls().iter().filter(|c| *c == "status").count()
}

#[test]
fn installs_only_once_ipamd_is_ready_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let ipamd = FakeIpamd::start(dir.path(), "10.0.1.5", 254);
    ipamd.set(|s| s.not_ready = Some("no ENI attached yet".into()));
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    let install = || {
        Command::new(BIN)
            .arg("install")
            .arg("--bin-dir")
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&conf)
            .arg("--socket")
            .arg(&ipamd.socket)
            .args(["--mtu", "1500", "--wait-timeout", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn installer")
    };
    let mut child = install();
    // While ipamd keeps saying "not ready" (three answers seen), nothing is installed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_calls(&ipamd) < 3 {
        assert!(Instant::now() < deadline, "installer never asked ipamd");
        std::thread::yield_now();
    }
    assert!(child.try_wait().expect("wait").is_none(), "still waiting");
    assert!(!bin.join("vpc-cni").exists() && !conf.join("10-nodewire.conflist").exists());

    ipamd.set(|s| s.not_ready = None);
    let out = child.wait_with_output().expect("installer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::fs::read(bin.join("vpc-cni")).expect("binary installed");
    assert_eq!(installed, std::fs::read(BIN).expect("self"));
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conf.join("10-nodewire.conflist")).expect("conflist"),
    )
    .expect("json");
    assert_eq!(list["plugins"][0]["type"], "vpc-cni");
    assert_eq!(list["plugins"][0]["mtu"], 1500);
    assert_eq!(
        list["plugins"][0]["ipamdSocket"],
        ipamd.socket.display().to_string()
    );
    assert_eq!(list["plugins"][1]["type"], "portmap");
    for d in [&bin, &conf] {
        assert_eq!(
            std::fs::read_dir(d).expect("dir").count(),
            1,
            "no temp files in {d:?}"
        );
    }

    // A re-run changes nothing (same inode: no rewrite).
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(conf.join("10-nodewire.conflist"))
        .expect("meta")
        .ino();
    let out = install().wait_with_output().expect("installer");
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(conf.join("10-nodewire.conflist"))
            .expect("meta")
            .ino(),
        ino
    );

    // ipamd gone and a timeout: the installer gives up with the reason, installing nothing new.
    drop(ipamd);
    let out = Command::new(BIN)
        .arg("install")
        .arg("--bin-dir")
        .arg(dir.path().join("bin2"))
        .arg("--conf-dir")
        .arg(dir.path().join("conf2"))
        .arg("--socket")
        .arg(dir.path().join("nope.sock"))
        .args(["--wait-timeout", "1"])
        .output()
        .expect("installer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not ready") && err.contains("nope.sock"),
        "{err}"
    );
    assert!(!dir.path().join("bin2").exists());
}
