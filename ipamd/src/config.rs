//! ipamd's configuration: upstream's environment variables (names and defaults kept so a node can
//! switch from aws-node), validated once at start. A bad value is an error naming the variable,
//! the value and what is allowed.

use crate::pool::Target;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {allowed}")]
pub struct ConfigError {
    pub var: String,
    pub value: String,
    pub allowed: String,
}

/// SNAT port randomisation (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatRandom {
    /// `--random-fully` (default).
    Prng,
    /// `--random`.
    HashRandom,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub warm_eni_target: u32,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub warm_prefix_target: Option<u32>,
    pub prefix_delegation: bool,
    pub max_eni: Option<u32>,
    pub ip_cooldown: Duration,
    pub eni_mtu: u32,
    pub external_snat: bool,
    pub exclude_snat_cidrs: Vec<Ipv4Net>,
    pub randomize_snat: SnatRandom,
    pub node_port_support: bool,
    pub connmark: u32,
    pub external_service_cidrs: Vec<Ipv4Net>,
    pub veth_prefix: String,
    pub backing_store: PathBuf,
    /// Upstream's checkpoint, read when ours is absent (switching from aws-node).
    pub upstream_backing_store: PathBuf,
    pub socket: PathBuf,
    pub disable_leaked_eni_cleanup: bool,
    pub leaked_eni_grace: Duration,
    pub manage_untagged_eni: bool,
    pub additional_eni_tags: BTreeMap<String, String>,
    pub cluster_name: Option<String>,
    pub disable_introspection: bool,
    pub introspection_bind: String,
    pub disable_metrics: bool,
    pub metrics_bind: String,
    /// How long an ADD waits for the pool to grow before failing.
    pub add_wait: Duration,
    pub max_pods: Option<u32>,
    /// ENIs younger than this are not freed (upstream: 1 min).
    pub min_eni_lifetime: Duration,
    /// Minimum spacing of scale-downs (upstream: 30 s).
    pub decrease_interval: Duration,
    /// No growth attempts for this long after the subnet ran out of addresses.
    pub subnet_backoff: Duration,
    /// How often the leaked-ENI sweep runs.
    pub leak_sweep_interval: Duration,
    /// How often the datastore is checked against EC2's view of the node.
    pub ec2_sync_interval: Duration,
    /// CIDRs and ENIs ipamd itself changed this recently are left alone by the resync (EC2's
    /// describe may lag its own changes).
    pub ec2_sync_grace: Duration,
    /// Where `DescribeInstanceTypes` answers are cached.
    pub instance_type_cache: PathBuf,
}

impl Config {
    /// The target that drives the warm pool.
    pub fn target(&self) -> Target {
        if self.warm_ip_target.is_some_and(|v| v > 0)
            || self.minimum_ip_target.is_some_and(|v| v > 0)
        {
            return Target::WarmIp {
                warm: self.warm_ip_target.unwrap_or(0),
                min: self.minimum_ip_target.unwrap_or(0),
            };
        }
        if self.prefix_delegation {
            Target::WarmPrefix(self.warm_prefix_target.unwrap_or(1))
        } else {
            Target::WarmEni(self.warm_eni_target)
        }
    }

    /// Reads and validates the configuration from `get` (the process environment in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let v = |name: &str| {
            get(name)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let err = |var: &str, value: &str, allowed: &str| ConfigError {
            var: var.into(),
            value: value.into(),
            allowed: allowed.into(),
        };
        let uint = |name: &str| -> Result<Option<u32>, ConfigError> {
            match v(name) {
                None => Ok(None),
                Some(s) => s
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| err(name, &s, "a whole number ≥ 0")),
            }
        };
        let boolean = |name: &str, default: bool| -> Result<bool, ConfigError> {
            match v(name).as_deref() {
                None => Ok(default),
                Some("true" | "TRUE" | "True" | "1") => Ok(true),
                Some("false" | "FALSE" | "False" | "0") => Ok(false),
                Some(s) => Err(err(name, s, "true or false")),
            }
        };
        let cidrs = |name: &str| -> Result<Vec<Ipv4Net>, ConfigError> {
            v(name)
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| {
                            c.parse::<Ipv4Net>()
                                .map(|n| n.trunc())
                                .map_err(|_| err(name, c, "comma-separated IPv4 CIDRs"))
                        })
                        .collect()
                })
                .unwrap_or(Ok(vec![]))
        };

        let warm_eni_target = match v("WARM_ENI_TARGET") {
            None => 1,
            Some(s) => s
                .parse()
                .map_err(|_| err("WARM_ENI_TARGET", &s, "a whole number ≥ 0"))?,
        };
        let warm_ip_target = uint("WARM_IP_TARGET")?;
        let minimum_ip_target = uint("MINIMUM_IP_TARGET")?;
        let warm_prefix_target = uint("WARM_PREFIX_TARGET")?;
        let prefix_delegation = boolean("ENABLE_PREFIX_DELEGATION", false)?;
        if prefix_delegation
            && [warm_ip_target, minimum_ip_target, warm_prefix_target]
                .iter()
                .all(|t| *t == Some(0))
        {
            return Err(err(
                "WARM_PREFIX_TARGET",
                "0",
                "with ENABLE_PREFIX_DELEGATION, at least one of WARM_PREFIX_TARGET, WARM_IP_TARGET, MINIMUM_IP_TARGET must be > 0",
            ));
        }
        // Custom networking (ENIConfig: pods in other subnets and security groups) is not
        // offered; running as if it were off would put pods in the node's subnet unannounced.
        if boolean("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", false)? {
            return Err(err(
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
                "true",
                "false (custom networking with ENIConfig is not supported by nodewire yet)",
            ));
        }
        let max_eni = match v("MAX_ENI") {
            None => None,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n < 1 => None,
                Ok(n) if n <= 100 => Some(n as u32),
                _ => return Err(err("MAX_ENI", &s, "-1 (no cap) or 1..100")),
            },
        };
        let ip_cooldown = Duration::from_secs(uint("IP_COOLDOWN_PERIOD")?.unwrap_or(30) as u64);
        let eni_mtu = uint("AWS_VPC_ENI_MTU")?.unwrap_or(9001);
        if !(576..=9001).contains(&eni_mtu) {
            return Err(err("AWS_VPC_ENI_MTU", &eni_mtu.to_string(), "576..9001"));
        }
        let randomize_snat = match v("AWS_VPC_K8S_CNI_RANDOMIZESNAT").as_deref() {
            None | Some("prng") => SnatRandom::Prng,
            Some("hashrandom") => SnatRandom::HashRandom,
            Some("none") => SnatRandom::None,
            Some(s) => {
                return Err(err(
                    "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
                    s,
                    "prng, hashrandom or none",
                ));
            }
        };
        let connmark = match v("AWS_VPC_K8S_CNI_CONNMARK") {
            None => 0x80,
            Some(s) => {
                let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => s.parse().ok(),
                };
                match parsed {
                    Some(m) if m != 0 => m,
                    _ => {
                        return Err(err(
                            "AWS_VPC_K8S_CNI_CONNMARK",
                            &s,
                            "a non-zero mark, decimal or 0x-hex",
                        ));
                    }
                }
            }
        };
        let veth_prefix = v("AWS_VPC_K8S_CNI_VETHPREFIX").unwrap_or_else(|| "eni".into());
        if veth_prefix.len() > 4
            || ["eth", "lo", "vlan"].contains(&veth_prefix.as_str())
            || !veth_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(err(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix,
                "1-4 alphanumeric characters, not eth, lo or vlan",
            ));
        }
        let additional_eni_tags = match v("ADDITIONAL_ENI_TAGS") {
            None => BTreeMap::new(),
            Some(s) => {
                let m: BTreeMap<String, String> = serde_json::from_str(&s).map_err(|_| {
                    err("ADDITIONAL_ENI_TAGS", &s, "a JSON object of string values")
                })?;
                // Keys reserved for ipamd's own bookkeeping are dropped, as upstream does.
                m.into_iter()
                    .filter(|(k, _)| !k.contains("k8s.amazonaws.com"))
                    .collect()
            }
        };
        let add_wait_ms = uint("NODEWIRE_ADD_WAIT_MS")?.unwrap_or(5_000);
        let leaked_grace = uint("NODEWIRE_LEAKED_ENI_GRACE_SECONDS")?.unwrap_or(300);
        let max_pods = uint("MAX_PODS")?;
        let secs = |name: &str, default: u32| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(uint(name)?.unwrap_or(default) as u64))
        };
        let min_eni_lifetime = secs("NODEWIRE_MIN_ENI_LIFETIME_SECONDS", 60)?;
        let decrease_interval = secs("NODEWIRE_DECREASE_INTERVAL_SECONDS", 30)?;
        let subnet_backoff = secs("NODEWIRE_SUBNET_BACKOFF_SECONDS", 10)?;
        let leak_sweep_interval = secs("NODEWIRE_LEAK_SWEEP_INTERVAL_SECONDS", 3600)?;
        let ec2_sync_interval = secs("NODEWIRE_EC2_SYNC_INTERVAL_SECONDS", 60)?;
        let ec2_sync_grace = secs("NODEWIRE_EC2_SYNC_GRACE_SECONDS", 60)?;
        Ok(Config {
            warm_eni_target,
            warm_ip_target,
            minimum_ip_target,
            warm_prefix_target,
            prefix_delegation,
            max_eni,
            ip_cooldown,
            eni_mtu,
            external_snat: boolean("AWS_VPC_K8S_CNI_EXTERNALSNAT", false)?,
            exclude_snat_cidrs: cidrs("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS")?,
            randomize_snat,
            node_port_support: boolean("AWS_VPC_CNI_NODE_PORT_SUPPORT", true)?,
            connmark,
            external_service_cidrs: cidrs("AWS_EXTERNAL_SERVICE_CIDRS")?,
            veth_prefix,
            backing_store: v("NODEWIRE_BACKING_STORE")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/run/nodewire/ipam.json".into()),
            upstream_backing_store: v("AWS_VPC_K8S_CNI_BACKING_STORE")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/run/aws-node/ipam.json".into()),
            socket: v("NODEWIRE_IPAMD_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/run/nodewire/ipamd.sock".into()),
            disable_leaked_eni_cleanup: boolean("DISABLE_LEAKED_ENI_CLEANUP", false)?,
            leaked_eni_grace: Duration::from_secs(leaked_grace as u64),
            manage_untagged_eni: boolean("MANAGE_UNTAGGED_ENI", true)?,
            additional_eni_tags,
            cluster_name: v("CLUSTER_NAME"),
            disable_introspection: boolean("DISABLE_INTROSPECTION", false)?,
            introspection_bind: v("INTROSPECTION_BIND_ADDRESS")
                .unwrap_or_else(|| "127.0.0.1:61679".into()),
            disable_metrics: boolean("DISABLE_METRICS", false)?,
            metrics_bind: v("NODEWIRE_METRICS_BIND_ADDRESS")
                .unwrap_or_else(|| "0.0.0.0:61678".into()),
            add_wait: Duration::from_millis(add_wait_ms as u64),
            max_pods,
            min_eni_lifetime,
            decrease_interval,
            subnet_backoff,
            leak_sweep_interval,
            ec2_sync_interval,
            ec2_sync_grace,
            instance_type_cache: v("NODEWIRE_INSTANCE_TYPE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/run/nodewire/instance-types.json".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_upstream() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.target(), Target::WarmEni(1));
        assert_eq!(
            (c.ip_cooldown, c.eni_mtu, c.connmark),
            (Duration::from_secs(30), 9001, 0x80)
        );
        assert_eq!(
            (
                c.veth_prefix.as_str(),
                c.randomize_snat,
                c.node_port_support
            ),
            ("eni", SnatRandom::Prng, true)
        );
        assert_eq!(c.socket, PathBuf::from("/var/run/nodewire/ipamd.sock"));
    }

    #[test]
    fn targets() {
        let cases: &[(&[(&str, &str)], Target)] = &[
            (&[("WARM_ENI_TARGET", "2")], Target::WarmEni(2)),
            (
                &[("WARM_IP_TARGET", "5"), ("WARM_ENI_TARGET", "2")],
                Target::WarmIp { warm: 5, min: 0 },
            ),
            (
                &[("MINIMUM_IP_TARGET", "10")],
                Target::WarmIp { warm: 0, min: 10 },
            ),
            (
                &[("ENABLE_PREFIX_DELEGATION", "true")],
                Target::WarmPrefix(1),
            ),
            (
                &[
                    ("ENABLE_PREFIX_DELEGATION", "true"),
                    ("WARM_PREFIX_TARGET", "2"),
                ],
                Target::WarmPrefix(2),
            ),
            (
                &[
                    ("ENABLE_PREFIX_DELEGATION", "true"),
                    ("WARM_IP_TARGET", "3"),
                ],
                Target::WarmIp { warm: 3, min: 0 },
            ),
            (&[("WARM_IP_TARGET", "0")], Target::WarmEni(1)),
        ];
        for (env, want) in cases {
            assert_eq!(cfg(env).expect("valid").target(), *want, "{env:?}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("WARM_IP_TARGET", "-1"),
            ("WARM_ENI_TARGET", "lots"),
            ("ENABLE_PREFIX_DELEGATION", "yes"),
            ("AWS_VPC_ENI_MTU", "9500"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "sometimes"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/8,nope"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x0"),
            ("ADDITIONAL_ENI_TAGS", "[1]"),
            ("MAX_ENI", "1000"),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
        ];
        for (k, val) in cases {
            let e = cfg(&[(k, val)]).expect_err("must be refused");
            assert_eq!(e.var, *k);
            assert!(e.to_string().starts_with(&format!("{k}=")), "{e}");
        }
        let e = cfg(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "0"),
            ("WARM_IP_TARGET", "0"),
            ("MINIMUM_IP_TARGET", "0"),
        ])
        .expect_err("PD with all targets 0");
        assert_eq!(e.var, "WARM_PREFIX_TARGET");
    }

    #[test]
    fn lists_and_tags() {
        let c = cfg(&[
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                "10.1.0.0/16, 192.168.1.7/24",
            ),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x100"),
            (
                "ADDITIONAL_ENI_TAGS",
                r#"{"team":"net","node.k8s.amazonaws.com/x":"dropped"}"#,
            ),
            ("MAX_ENI", "-1"),
        ])
        .expect("valid");
        assert_eq!(
            c.exclude_snat_cidrs,
            vec![
                "10.1.0.0/16".parse::<Ipv4Net>().expect("net"),
                "192.168.1.0/24".parse().expect("net")
            ]
        );
        assert_eq!((c.connmark, c.max_eni), (0x100, None));
        assert_eq!(
            c.additional_eni_tags.keys().collect::<Vec<_>>(),
            vec!["team"]
        );
    }
}
