//! Helpers for the plugin's tests: throwaway network namespaces, a scripted ipamd on a unix
//! socket, running the real `vpc-cni` binary inside a "host" namespace, and reading kernel state
//! back with iproute2's JSON output (independent of the plugin's own netlink code).
#![allow(dead_code)]

use nodewire_proto::ipam::ipam_server::{Ipam, IpamServer};
use nodewire_proto::ipam::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_vpc-cni");

/// A network namespace deleted on drop. Names start with `cn<4 hex>-` (the leftover check
/// in `make test` looks for them).
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = format!("cn{:04x}-{tag}", std::process::id() & 0xffff);
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j", "-n", &self.0];
        a.extend_from_slice(args);
        let out = Command::new("ip").args(&a).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {a:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return json!([]);
        }
        serde_json::from_slice(&out.stdout).expect("ip -j output")
    }

    /// Rules other than the kernel's defaults, as "prio: text".
    pub fn pod_rules(&self) -> Vec<String> {
        self.ip_json(&["rule", "show"])
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| ![0, 32766, 32767].contains(&r["priority"].as_u64().unwrap_or(0)))
            .map(|r| {
                let mut s = format!("{}:", r["priority"]);
                if let Some(src) = r["src"].as_str().filter(|s| *s != "all") {
                    s += &format!(" from {src}");
                }
                if let Some(dst) = r["dst"].as_str() {
                    s += &format!(" to {dst}");
                }
                s + &format!(" lookup {}", r["table"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// Routes of a table as "dst[ via gw] dev X[ scope S]".
    pub fn routes(&self, table: &str) -> Vec<String> {
        self.ip_json(&["route", "show", "table", table])
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| {
                let mut s = r["dst"].as_str().unwrap_or("").to_string();
                if let Some(g) = r["gateway"].as_str() {
                    s += &format!(" via {g}");
                }
                s += &format!(" dev {}", r["dev"].as_str().unwrap_or(""));
                if let Some(sc) = r["scope"].as_str() {
                    s += &format!(" scope {sc}");
                }
                s
            })
            .collect()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.ip_json(&["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .map(|l| l["ifname"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the scripted ipamd answers and what it was asked.
#[derive(Default)]
pub struct Script {
    pub ip: String,
    pub table: u32,
    pub add_error: Option<(tonic::Code, String)>,
    pub not_ready: Option<String>,
    pub calls: Vec<String>,
    pub gc_valid: Vec<(String, String, String)>,
    pub held: Option<(AttachmentKey, String)>,
    /// DEL answers this error instead of releasing.
    pub del_error: Option<(tonic::Code, String)>,
    /// Like the real ipamd, a release removes the pod's host rules and /32 route (done here by
    /// iproute2 in this namespace, independent of the plugin's code).
    pub host_ns: Option<String>,
}

/// ipamd's half of a release, as iproute2 commands: every copy of the pod's rules, its route.
fn prune(ns: &str, ip: &str) {
    let ip_ok = |args: &[&str]| {
        Command::new("ip")
            .args(["-n", ns])
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    while ip_ok(&["rule", "del", "priority", "512", "to", ip]) {}
    while ip_ok(&["rule", "del", "priority", "1536", "from", ip]) {}
    ip_ok(&["route", "del", &format!("{ip}/32"), "table", "main"]);
}

#[derive(Clone)]
pub struct Fake(pub Arc<Mutex<Script>>);

#[tonic::async_trait]
impl Ipam for Fake {
    async fn add(&self, r: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().expect("script");
        let k = r.key.clone().unwrap_or_default();
        s.calls.push(format!(
            "add {} {} {}",
            k.container_id, k.ifname, r.host_ifname
        ));
        if let Some((c, m)) = &s.add_error {
            return Err(Status::new(*c, m.clone()));
        }
        s.held = Some((k, s.ip.clone()));
        Ok(Response::new(AddReply {
            ipv4: s.ip.clone(),
            route_table: s.table,
            device_number: 0,
            vpc_cidrs: vec![],
            external_snat: false,
            mtu: 9001,
            from_prefix: false,
            existing: false,
        }))
    }
    async fn del(&self, r: Request<DelRequest>) -> Result<Response<DelReply>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().expect("script");
        let k = r.key.unwrap_or_default();
        let unused = if r.unused { " (unused)" } else { "" };
        s.calls
            .push(format!("del {} {}{unused}", k.container_id, k.ifname));
        if let Some((c, m)) = &s.del_error {
            return Err(Status::new(*c, m.clone()));
        }
        match s.held.take() {
            Some((h, ip)) if h == k => {
                if let Some(ns) = &s.host_ns {
                    prune(ns, &ip);
                }
                Ok(Response::new(DelReply {
                    ipv4: ip,
                    route_table: s.table,
                }))
            }
            other => {
                s.held = other;
                Ok(Response::new(DelReply::default()))
            }
        }
    }
    async fn check(&self, r: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().expect("script");
        s.calls.push(format!("check {}", r.ipv4));
        match &s.held {
            Some((k, ip)) if Some(k) == r.key.as_ref() && *ip == r.ipv4 => {
                Ok(Response::new(CheckReply {
                    route_table: s.table,
                }))
            }
            _ => Err(Status::not_found(
                "ipamd holds no address for this attachment",
            )),
        }
    }
    async fn gc(&self, r: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().expect("script");
        s.calls.push(format!("gc {}", r.network_name));
        s.gc_valid = r
            .valid
            .iter()
            .map(|k| {
                (
                    k.network_name.clone(),
                    k.container_id.clone(),
                    k.ifname.clone(),
                )
            })
            .collect();
        Ok(Response::new(GcReply { released: vec![] }))
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let mut s = self.0.lock().expect("script");
        s.calls.push("status".into());
        Ok(Response::new(StatusReply {
            ready: s.not_ready.is_none(),
            reason: s
                .not_ready
                .clone()
                .unwrap_or_else(|| "3 addresses free".into()),
        }))
    }
}

/// A scripted ipamd serving on `<dir>/ipamd.sock` from its own thread.
pub struct FakeIpamd {
    pub script: Arc<Mutex<Script>>,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeIpamd {
    pub fn start(dir: &Path, ip: &str, table: u32) -> FakeIpamd {
        let script = Arc::new(Mutex::new(Script {
            ip: ip.into(),
            table,
            ..Default::default()
        }));
        let socket = dir.join("ipamd.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let fake = Fake(script.clone());
        let sock = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::UnixListener::bind(&sock).expect("bind fake ipamd");
                ready_tx.send(()).expect("ready");
                tonic::transport::Server::builder()
                    .add_service(IpamServer::new(fake))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(l),
                        async {
                            let _ = rx.await;
                        },
                    )
                    .await
                    .expect("serve");
            });
        });
        ready_rx.recv().expect("fake ipamd listening");
        FakeIpamd {
            script,
            socket,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.script.lock().expect("script").calls.clone()
    }

    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().expect("script"))
    }
}

impl Drop for FakeIpamd {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plugin call: environment and config.
pub struct Call<'a> {
    pub host: &'a Ns,
    pub command: &'a str,
    pub container: &'a str,
    pub netns: String,
    pub ifname: &'a str,
    pub args: &'a str,
    pub conf: Value,
}

/// Runs the real binary inside the host namespace; returns (exit ok, stdout JSON or Null).
pub fn run(c: &Call) -> (bool, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &c.host.0, BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", c.command)
        .env("CNI_CONTAINERID", c.container)
        .env("CNI_NETNS", &c.netns)
        .env("CNI_IFNAME", c.ifname)
        .env("CNI_ARGS", c.args)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpc-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(c.conf.to_string().as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("vpc-cni");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    if !out.status.success() {
        eprintln!(
            "vpc-cni {} stderr: {}",
            c.command,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), v)
}

pub fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "nodewire",
        "type": "vpc-cni",
        "mtu": 1500,
        "ipamdSocket": socket,
        "dns": { "nameservers": ["10.100.0.10"] },
    })
}
