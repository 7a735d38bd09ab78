//! The CNI protocol as plain data: the `CNI_*` environment, the network configuration on stdin,
//! `CNI_ARGS`, host veth naming, result and error JSON. No I/O here; every failure is a
//! [`CniError`] carrying a spec error code.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Spec versions this plugin speaks; `cniVersion` in the config picks the result format.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";
pub const DEFAULT_MTU: u32 = 9001;
pub const DEFAULT_VETH_PREFIX: &str = "eni";
pub const DEFAULT_SOCKET: &str = "/var/run/nodewire/ipamd.sock";
/// The pod's gateway: it exists nowhere; a permanent neighbour entry makes the host veth answer.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// `cni.dev/valid-attachments`: the GC list a 1.1 runtime passes in the config.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// Spec error codes (1–99 are the spec's; 100+ are ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's cniVersion is not one we speak.
    IncompatibleVersion = 1,
    /// 3: the container (its netns) does not exist.
    UnknownContainer = 3,
    /// 4: a required CNI_* variable is missing or malformed.
    InvalidEnv = 4,
    /// 5: reading stdin failed.
    Io = 5,
    /// 6: stdin is not JSON.
    Decode = 6,
    /// 7: the network configuration is invalid.
    InvalidConfig = 7,
    /// 11: try again later (ipamd unreachable, or its pool is empty but growing).
    TryAgain = 11,
    /// 50: the plugin cannot serve an ADD now (STATUS).
    NotAvailable = 50,
    /// 100: ipamd has no address and cannot get one (node limit, subnet full).
    NoAddress = 100,
    /// 101: ipamd refused or failed the request.
    Ipamd = 101,
    /// 102: setting up or tearing down the pod's network failed.
    Setup = 102,
    /// 103: CHECK found the pod's network differs from what ADD set up.
    Drift = 103,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }

    /// The spec's error object.
    pub fn to_json(&self, version: &str) -> Value {
        let mut o = json!({ "cniVersion": version, "code": self.code as u32, "msg": self.msg });
        if !self.details.is_empty() {
            o["details"] = Value::String(self.details.clone());
        }
        o
    }
}

fn invalid_env(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidEnv, msg)
}

fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime sends none (containerd's second DEL).
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn arg(&self, k: &str) -> Option<&str> {
        self.args
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Longest container id accepted: the host veth's alias "<id>/<ifname>" must fit the kernel's
/// IFALIASZ (256 with the NUL). Runtimes use 64 hex characters.
pub const MAX_CONTAINER_ID: usize = 200;

/// The spec's container id: a letter or digit, then letters, digits, '_', '.', '-'.
pub fn valid_container_id(id: &str) -> bool {
    let mut c = id.chars();
    id.len() <= MAX_CONTAINER_ID
        && c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '.' | '-'))
}

/// Linux interface name rules (IFNAMSIZ 16 with the NUL).
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`, in any order. Empty values are kept.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(invalid_env(format!(
                "CNI_ARGS entry {part:?} is not KEY=VALUE (CNI_ARGS is KEY=VALUE pairs joined by ';')"
            )));
        };
        if k.is_empty() {
            return Err(invalid_env(format!(
                "CNI_ARGS entry {part:?} has an empty key"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Reads and checks the `CNI_*` variables the command needs.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let command = match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err(invalid_env(format!(
                "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
            )));
        }
        None => {
            return Err(invalid_env(
                "CNI_COMMAND is not set: vpc-cni is a CNI plugin run by the container runtime \
                 (run `vpc-cni --help` for the installer)",
            ));
        }
    };
    // VERSION ignores CNI_ARGS; DEL must not block pod deletion over a malformed one (it only
    // names the host veth for the ipamd-down fallback).
    let args = match parse_cni_args(&get("CNI_ARGS").unwrap_or_default()) {
        Ok(a) => a,
        Err(_) if matches!(command, Command::Version | Command::Del) => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    let mut env = Env {
        command,
        container_id: get("CNI_CONTAINERID").unwrap_or_default(),
        netns: get("CNI_NETNS").unwrap_or_default(),
        ifname: get("CNI_IFNAME").unwrap_or_default(),
        args,
    };
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        if env.container_id.is_empty() {
            return Err(invalid_env(
                "CNI_CONTAINERID is required for ADD, DEL and CHECK",
            ));
        }
        if env.ifname.is_empty() {
            return Err(invalid_env("CNI_IFNAME is required for ADD, DEL and CHECK"));
        }
        if !valid_ifname(&env.ifname) {
            return Err(invalid_env(format!(
                "CNI_IFNAME {:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)",
                env.ifname
            )));
        }
    }
    // The spec's container id: alphanumeric first, then alphanumerics, '_', '.', '-' (DEL takes
    // whatever the runtime recorded).
    if matches!(command, Command::Add | Command::Check) && !valid_container_id(&env.container_id) {
        return Err(invalid_env(format!(
            "CNI_CONTAINERID {:?} is not a valid container id (a letter or digit, then letters, \
             digits, '_', '.' or '-'; at most {MAX_CONTAINER_ID} characters)",
            env.container_id
        )));
    }
    if matches!(command, Command::Add | Command::Check) && env.netns.is_empty() {
        return Err(invalid_env("CNI_NETNS is required for ADD and CHECK"));
    }
    if command == Command::Del && env.netns == "dummy" {
        env.netns.clear();
    }
    Ok(env)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// What ADD/DEL/CHECK know from a previous result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrevResult {
    pub ip: Option<Ipv4Addr>,
    pub host_veth: Option<String>,
}

/// The network configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: String,
    pub name: String,
    pub mtu: u32,
    pub veth_prefix: String,
    pub ipamd_socket: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub dns: Option<Value>,
    pub prev: Option<PrevResult>,
    /// GC: (container id, ifname) pairs the runtime still uses.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

fn str_field<'a>(o: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, CniError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid_config(format!(
            "config field {k:?} must be a string, got {v}"
        ))),
    }
}

/// Just the config's cniVersion (for error replies when the rest fails to parse).
pub fn config_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Parses and validates the config for `command`.
pub fn parse_config(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            format!("the network configuration on stdin is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(o) = v else {
        return Err(CniError::new(
            Code::Decode,
            "the network configuration on stdin must be a JSON object",
        ));
    };
    let version = str_field(&o, "cniVersion")?
        .ok_or_else(|| invalid_config("config field \"cniVersion\" is required"))?
        .to_string();
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported; vpc-cni speaks {}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    if matches!(command, Command::Gc | Command::Status) && version != "1.1.0" {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{command:?} needs cniVersion 1.1.0, the config says {version}"),
        ));
    }
    let name = str_field(&o, "name")?.unwrap_or_default().to_string();
    if name.is_empty() && command != Command::Version {
        return Err(invalid_config(
            "config field \"name\" (the network name) is required",
        ));
    }
    let mtu = match o.get("mtu") {
        None | Some(Value::Null) => DEFAULT_MTU,
        // Upstream's conflist carries the MTU as a string.
        Some(Value::String(s)) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| invalid_config(format!("config field \"mtu\" {s:?} is not a number")))?,
        Some(Value::Number(n)) => {
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid_config(format!("config field \"mtu\" {n} is not a valid MTU"))
                })?
        }
        Some(v) => {
            return Err(invalid_config(format!(
                "config field \"mtu\" must be a number, got {v}"
            )));
        }
    };
    if !(576..=9001).contains(&mtu) {
        return Err(invalid_config(format!(
            "config field \"mtu\" {mtu} is out of range: VPC MTUs are 576..9001"
        )));
    }
    let veth_prefix = str_field(&o, "vethPrefix")?
        .unwrap_or(DEFAULT_VETH_PREFIX)
        .to_string();
    if veth_prefix.is_empty()
        || veth_prefix.len() > 4
        || ["eth", "lo", "vlan"].contains(&veth_prefix.as_str())
        || !veth_prefix.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(invalid_config(format!(
            "config field \"vethPrefix\" {veth_prefix:?} must be 1-4 letters or digits and not \
             \"eth\", \"lo\" or \"vlan\""
        )));
    }
    let ipamd_socket = PathBuf::from(str_field(&o, "ipamdSocket")?.unwrap_or(DEFAULT_SOCKET));
    let log_file = str_field(&o, "logFile")?
        .or(str_field(&o, "pluginLogFile")?)
        .filter(|s| !s.is_empty() && *s != "stderr" && *s != "stdout")
        .map(PathBuf::from);
    let level = str_field(&o, "logLevel")?.or(str_field(&o, "pluginLogLevel")?);
    let log_level = match level.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("info") => LogLevel::Info,
        Some("debug") | Some("trace") => LogLevel::Debug,
        Some("warn") | Some("warning") => LogLevel::Warn,
        Some("error") => LogLevel::Error,
        Some(other) => {
            return Err(invalid_config(format!(
                "config field \"logLevel\" {other:?} is not one of error, warn, info, debug"
            )));
        }
    };
    let dns = match o.get("dns") {
        None | Some(Value::Null) => None,
        Some(d @ Value::Object(_)) => Some(d.clone()),
        Some(v) => {
            return Err(invalid_config(format!(
                "config field \"dns\" must be an object, got {v}"
            )));
        }
    };
    let prev = match o.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(p) => match parse_prev_result(p) {
            Ok(p) => Some(p),
            // DEL must not fail on what an older plugin or runtime left; it tears down by name.
            Err(_) if command == Command::Del => None,
            Err(e) => return Err(e),
        },
    };
    let valid_attachments = match o.get(VALID_ATTACHMENTS) {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|e| {
                    let cid = e.get("containerID").and_then(Value::as_str);
                    let ifn = e.get("ifname").and_then(Value::as_str);
                    match (cid, ifn) {
                        (Some(c), Some(i)) if !c.is_empty() && !i.is_empty() => {
                            Ok((c.to_string(), i.to_string()))
                        }
                        _ => Err(invalid_config(format!(
                            "{VALID_ATTACHMENTS} entry {e} needs string \"containerID\" and \"ifname\""
                        ))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(v) => {
            return Err(invalid_config(format!(
                "config field {VALID_ATTACHMENTS:?} must be a list, got {v}"
            )));
        }
    };
    if command == Command::Gc && valid_attachments.is_none() {
        return Err(invalid_config(format!(
            "GC needs the {VALID_ATTACHMENTS:?} list in the config"
        )));
    }
    Ok(NetConf {
        version,
        name,
        mtu,
        veth_prefix,
        ipamd_socket,
        log_file,
        log_level,
        dns,
        prev,
        valid_attachments,
    })
}

/// The pod's IPv4 address and the host veth from a previous result (any supported version).
pub fn parse_prev_result(p: &Value) -> Result<PrevResult, CniError> {
    let bad = |m: &str| invalid_config(format!("prevResult {m}"));
    let Value::Object(p) = p else {
        return Err(bad("must be an object"));
    };
    let ifaces = match p.get("interfaces") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("\"interfaces\" must be a list")),
    };
    let host_veth = ifaces.iter().find_map(|i| {
        let sandbox = i.get("sandbox").and_then(Value::as_str).unwrap_or("");
        let name = i.get("name").and_then(Value::as_str)?;
        (sandbox.is_empty() && valid_ifname(name)).then(|| name.to_string())
    });
    let ips = match p.get("ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("\"ips\" must be a list")),
    };
    let mut ip = None;
    for e in &ips {
        let Some(a) = e.get("address").and_then(Value::as_str) else {
            return Err(bad("has an IP entry without \"address\""));
        };
        let addr = a.split('/').next().unwrap_or_default();
        match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => {
                ip.get_or_insert(v4);
            }
            Ok(_) => {}
            Err(_) => return Err(bad(&format!("address {a:?} is not an IP address"))),
        }
    }
    Ok(PrevResult { ip, host_veth })
}

/// Host-side veth name: `<prefix>` + the first 11 hex digits of sha1("<namespace>.<pod name>"),
/// as upstream and Calico name it; callers without Kubernetes pod args hash the container id.
/// A second interface of the same pod hashes "<namespace>.<pod name>.<ifname>".
pub fn host_veth_name(prefix: &str, env: &Env) -> String {
    let seed = match (env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME")) {
        (Some(ns), Some(name)) if env.ifname == "eth0" => format!("{ns}.{name}"),
        (Some(ns), Some(name)) => format!("{ns}.{name}.{}", env.ifname),
        _ if env.ifname == "eth0" => env.container_id.clone(),
        _ => format!("{}.{}", env.container_id, env.ifname),
    };
    let hex = sha1_smol::Sha1::from(seed).digest().to_string();
    format!("{prefix}{}", &hex[..11])
}

/// A locally administered unicast MAC from random bytes (never all-zero).
pub fn local_mac(mut b: [u8; 6]) -> [u8; 6] {
    b[0] = (b[0] & 0xfe) | 0x02;
    if b[1..].iter().all(|x| *x == 0) {
        b[5] = 1;
    }
    b
}

pub fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What ADD built, for the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Wired {
    pub host_veth: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

/// The ADD result in the format of `version`.
pub fn add_result(version: &str, w: &Wired, dns: Option<&Value>) -> Value {
    let v11 = version == "1.1.0";
    let mut host = json!({ "name": w.host_veth, "mac": w.host_mac });
    let mut pod = json!({ "name": w.pod_ifname, "mac": w.pod_mac, "sandbox": w.netns });
    if v11 {
        host["mtu"] = json!(w.mtu);
        pod["mtu"] = json!(w.mtu);
    }
    let mut ip = json!({
        "address": format!("{}/32", w.ip),
        "gateway": POD_GATEWAY.to_string(),
        "interface": 1,
    });
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    let mut r = json!({
        "cniVersion": version,
        "interfaces": [host, pod],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": POD_GATEWAY.to_string() }],
    });
    if let Some(d) = dns {
        r["dns"] = d.clone();
    }
    r
}

/// The VERSION answer.
pub fn version_result(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|v| SUPPORTED.contains(v))
        .unwrap_or(LATEST);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_env(|k| m.get(k).cloned())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn env_table() {
        let mut ok = ADD.to_vec();
        ok.push((
            "CNI_ARGS",
            "K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default",
        ));
        let e = env_of(&ok).expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(e.arg("K8S_POD_NAMESPACE"), Some("default"));

        let long_id = "a".repeat(MAX_CONTAINER_ID + 1);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "CNI_COMMAND is not set"),
            (&[("CNI_COMMAND", "FROB")], "FROB"),
            (&[("CNI_COMMAND", "ADD")], "CNI_CONTAINERID"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS",
            ),
            (
                &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a")],
                "CNI_IFNAME is required",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "way-too-long-name0"),
                ],
                "not a valid interface name",
            ),
            (
                &[("CNI_COMMAND", "GC"), ("CNI_ARGS", "novalue")],
                "not KEY=VALUE",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-x/../y"),
                    ("CNI_NETNS", "/var/run/netns/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "not a valid container id",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", &long_id),
                    ("CNI_NETNS", "/var/run/netns/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "not a valid container id",
            ),
        ];
        for (pairs, want) in cases {
            let e = env_of(pairs).expect_err(want);
            assert_eq!(e.code, Code::InvalidEnv, "{want}");
            assert!(e.msg.contains(want), "{} lacks {want}", e.msg);
        }
        // DEL without a netns (containerd's second DEL) and GC/STATUS without container env.
        env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("DEL with no netns");
        env_of(&[("CNI_COMMAND", "STATUS")]).expect("STATUS");
        // A malformed CNI_ARGS does not stop VERSION or DEL.
        env_of(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "novalue")]).expect("VERSION");
        let d = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ])
        .expect("DEL with a bad CNI_ARGS");
        assert!(d.args.is_empty());
    }

    #[test]
    fn config_table() {
        let ok = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","type":"vpc-cni","mtu":"1500","unknown":[1]}"#,
            Command::Add,
        )
        .expect("valid");
        assert_eq!((ok.mtu, ok.veth_prefix.as_str()), (1500, "eni"));
        assert_eq!(ok.ipamd_socket, PathBuf::from(DEFAULT_SOCKET));
        let cases: &[(&str, Command, Code, &str)] = &[
            ("not json", Command::Add, Code::Decode, "not valid JSON"),
            ("[1]", Command::Add, Code::Decode, "JSON object"),
            (
                r#"{"name":"n"}"#,
                Command::Add,
                Code::InvalidConfig,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"n"}"#,
                Command::Add,
                Code::IncompatibleVersion,
                "0.3.1",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Command::Status,
                Code::IncompatibleVersion,
                "1.1.0",
            ),
            (
                r#"{"cniVersion":"1.0.0"}"#,
                Command::Add,
                Code::InvalidConfig,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#,
                Command::Add,
                Code::InvalidConfig,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":100000}"#,
                Command::Add,
                Code::InvalidConfig,
                "out of range",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":-1}"#,
                Command::Add,
                Code::InvalidConfig,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":"vlan"}"#,
                Command::Add,
                Code::InvalidConfig,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":"abcde"}"#,
                Command::Add,
                Code::InvalidConfig,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":7}"#,
                Command::Add,
                Code::InvalidConfig,
                "string",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","logLevel":"loud"}"#,
                Command::Add,
                Code::InvalidConfig,
                "logLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","dns":[]}"#,
                Command::Add,
                Code::InvalidConfig,
                "dns",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"nope"}]}}"#,
                Command::Check,
                Code::InvalidConfig,
                "prevResult",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n"}"#,
                Command::Gc,
                Code::InvalidConfig,
                "valid-attachments",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
                Command::Gc,
                Code::InvalidConfig,
                "ifname",
            ),
        ];
        for (input, cmd, code, want) in cases {
            let e = parse_config(input.as_bytes(), *cmd).expect_err(input);
            assert_eq!(e.code, *code, "{input}: {}", e.msg);
            assert!(e.msg.contains(want), "{input}: {} lacks {want}", e.msg);
        }
        // A broken prevResult does not stop a DEL.
        let d = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":"x"}}"#,
            Command::Del,
        )
        .expect("DEL tolerates");
        assert_eq!(d.prev, None);
    }

    #[test]
    fn prev_result_of_each_version() {
        for v in SUPPORTED {
            let w = Wired {
                host_veth: "eni0123456789a".into(),
                host_mac: "02:00:00:00:00:01".into(),
                pod_ifname: "eth0".into(),
                pod_mac: "02:00:00:00:00:02".into(),
                netns: "/var/run/netns/x".into(),
                ip: Ipv4Addr::new(10, 0, 1, 5),
                mtu: 9001,
            };
            let r = add_result(v, &w, None);
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["ips"][0].get("version").is_some(), v == "0.4.0");
            assert_eq!(r["interfaces"][1].get("mtu").is_some(), v == "1.1.0");
            let p = parse_prev_result(&r).expect("own result parses");
            assert_eq!(p.ip, Some(w.ip));
            assert_eq!(p.host_veth.as_deref(), Some("eni0123456789a"));
        }
    }

    #[test]
    fn veth_names_match_upstream() {
        let mut e = env_of(&ADD).expect("env");
        e.args.insert("K8S_POD_NAMESPACE".into(), "default".into());
        e.args.insert("K8S_POD_NAME".into(), "web-0".into());
        // sha1("default.web-0") = 0d7763386da…, as ipamd's restart check computes it.
        assert_eq!(host_veth_name("eni", &e), "eni0d7763386da");
        e.ifname = "net1".into();
        assert_ne!(host_veth_name("eni", &e), "eni0d7763386da");
        let bare = env_of(&ADD).expect("env");
        let n = host_veth_name("eni", &bare);
        assert_eq!(n.len(), 14);
        assert!(valid_ifname(&n));
    }

    #[test]
    fn macs_are_local_unicast() {
        for b in [[0xff; 6], [0; 6], [1, 2, 3, 4, 5, 6]] {
            let m = local_mac(b);
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 2, "locally administered");
            assert!(m[1..].iter().any(|x| *x != 0));
        }
        assert_eq!(mac_string(&[2, 0xab, 0, 0, 0, 1]), "02:ab:00:00:00:01");
    }

    #[test]
    fn version_answer() {
        assert_eq!(version_result(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_result(Some("0.1.0"))["cniVersion"], LATEST);
        assert_eq!(version_result(None)["supportedVersions"][2], "1.1.0");
    }
}
