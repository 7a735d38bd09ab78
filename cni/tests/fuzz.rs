//! Property tests over what a runtime can hand the plugin: any config bytes, any environment, any
//! CNI_ARGS. The plugin never panics and every failure is a spec error object with a spec or
//! plugin code. Commands here never reach ipamd or the kernel: configs point at a socket that
//! does not exist, and netns paths do not exist either. Each test thread first moves into a fresh
//! anonymous network namespace of its own, so a DEL's host teardown can only touch that.

use nodewire_cni::spec::{self, Command};
use proptest::prelude::*;
use serde_json::{Value, json};

const CODES: [u64; 13] = [1, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 2];

thread_local! {
    static PRIVATE_NETNS: () = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("a private network namespace for this test thread");
}

fn check_output(out: &str, code: i32) {
    if code == 0 {
        return;
    }
    let v: Value = serde_json::from_str(out).expect("an error is JSON on stdout");
    let c = v["code"].as_u64().expect("numeric code");
    assert!(CODES.contains(&c), "unexpected code {c}: {v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["cniVersion"].as_str().is_some(), "{v}");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("1.0.0"),
            Just("0.4.0"),
            Just("1.1.0"),
            Just("9001"),
            Just("eni")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("name".to_string()),
                    Just("mtu".to_string()),
                    Just("vethPrefix".to_string()),
                    Just("prevResult".to_string()),
                    Just("ips".to_string()),
                    Just("address".to_string()),
                    Just("interfaces".to_string()),
                    Just("dns".to_string()),
                    Just("cni.dev/valid-attachments".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn config() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (
            json_value(),
            prop_oneof![Just("0.4.0"), Just("1.0.0"), Just("1.1.0"), Just("0.3.1")]
        )
            .prop_map(|(v, ver)| {
                let mut o =
                    json!({"cniVersion": ver, "name": "n", "ipamdSocket": "/nonexistent/s"});
                if let Value::Object(m) = v {
                    for (k, x) in m {
                        if k != "ipamdSocket" {
                            o[k] = x;
                        }
                    }
                }
                o.to_string().into_bytes()
            }),
    ]
}

fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("CNI_COMMAND"),
        Just("CNI_CONTAINERID"),
        Just("CNI_NETNS"),
        Just("CNI_IFNAME"),
        Just("CNI_ARGS"),
        Just("CNI_PATH"),
    ];
    let val = prop_oneof![
        prop_oneof![
            Just("ADD"),
            Just("DEL"),
            Just("CHECK"),
            Just("GC"),
            Just("STATUS"),
            Just("VERSION"),
            Just("eth0"),
            Just("/nonexistent/netns"),
            Just(""),
            Just("K8S_POD_NAME=a;K8S_POD_NAMESPACE=b"),
            Just("IgnoreUnknown=1;;x"),
            Just("=v"),
        ]
        .prop_map(str::to_string),
        "[ -~]{0,24}",
    ];
    prop::collection::vec((key.prop_map(str::to_string), val), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_fails_with_spec_errors(e in env(), stdin in config()) {
        PRIVATE_NETNS.with(|_| ());
        // Configs without ipamdSocket use the default path: it must not reach a real ipamd.
        prop_assert!(!std::path::Path::new(spec::DEFAULT_SOCKET).exists(), "a real ipamd is listening at the default socket");
        let m: std::collections::BTreeMap<String, String> = e.into_iter().collect();
        // ADD and CHECK with a netns that exists would touch the kernel: keep them off it.
        let netns_ok = m.get("CNI_NETNS").is_none_or(|n| n.is_empty() || !std::path::Path::new(n).exists());
        prop_assume!(netns_ok);
        let (out, code) = nodewire_cni::invoke(|k| m.get(k).cloned(), &stdin);
        check_output(&out, code);
    }

    #[test]
    fn cni_args_parse_or_fail_with_code_4(s in "[ -~]{0,40}") {
        match spec::parse_cni_args(&s) {
            Ok(m) => prop_assert!(m.keys().all(|k| !k.is_empty())),
            Err(e) => prop_assert_eq!(e.code, spec::Code::InvalidEnv),
        }
    }

    #[test]
    fn configs_parse_or_fail_with_config_codes(stdin in config()) {
        for cmd in [Command::Add, Command::Del, Command::Check, Command::Gc, Command::Status] {
            if let Err(e) = spec::parse_config(&stdin, cmd) {
                prop_assert!(matches!(e.code, spec::Code::Decode | spec::Code::InvalidConfig | spec::Code::IncompatibleVersion), "{:?}", e);
            }
        }
    }
}
