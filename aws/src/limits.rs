//! Instance-type limits: the networking and EBS facts `DescribeInstanceTypes` reports.
//!
//! The table is the built-in fallback for ipamd / the CSI node and the data vpcsim serves from
//! `DescribeInstanceTypes`, so the emulator and the daemons can never disagree about a limit.

/// Hypervisor family of an instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    Nitro,
    Xen,
}

impl Hypervisor {
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Nitro => "nitro",
            Hypervisor::Xen => "xen",
        }
    }
}

/// How the EBS attachment limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentLimitType {
    /// ENIs and EBS volumes share one pool of attachment slots (most Nitro types).
    Shared,
    /// EBS volumes have their own slots.
    Dedicated,
}

impl AttachmentLimitType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentLimitType::Shared => "shared",
            AttachmentLimitType::Dedicated => "dedicated",
        }
    }
}

/// One network card of an instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkCard {
    pub index: u32,
    pub maximum_network_interfaces: u32,
}

/// Limits of one instance type, as `DescribeInstanceTypes` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub hypervisor: Hypervisor,
    pub bare_metal: bool,
    /// ENIs on the whole instance (sum over network cards).
    pub maximum_network_interfaces: u32,
    pub ipv4_addresses_per_interface: u32,
    pub ipv6_addresses_per_interface: u32,
    pub default_network_card_index: u32,
    pub network_cards: &'static [NetworkCard],
    /// `EbsInfo.NvmeSupport`: "required" on Nitro, "unsupported" on Xen.
    pub nvme: bool,
    pub maximum_ebs_attachments: u32,
    pub attachment_limit_type: AttachmentLimitType,
}

impl InstanceTypeInfo {
    /// ENIs usable on the default network card (what ipamd allocates on).
    pub fn default_card_enis(&self) -> u32 {
        self.network_cards
            .iter()
            .find(|c| c.index == self.default_network_card_index)
            .map_or(self.maximum_network_interfaces, |c| {
                c.maximum_network_interfaces
            })
    }

    /// Max ENIs on one network card, if the card exists.
    pub fn card_enis(&self, card: u32) -> Option<u32> {
        self.network_cards
            .iter()
            .find(|c| c.index == card)
            .map(|c| c.maximum_network_interfaces)
    }

    /// Prefix delegation works on Nitro and bare-metal types only.
    pub fn supports_prefix_delegation(&self) -> bool {
        self.hypervisor == Hypervisor::Nitro || self.bare_metal
    }

    /// Upstream's max-pods formula: `ENIs × (IPv4 per ENI − 1) + 2`, default card only.
    pub fn max_pods(&self) -> u32 {
        self.default_card_enis() * (self.ipv4_addresses_per_interface.saturating_sub(1)) + 2
    }
}

const ONE_CARD_2: &[NetworkCard] = &[NetworkCard {
    index: 0,
    maximum_network_interfaces: 2,
}];
const ONE_CARD_3: &[NetworkCard] = &[NetworkCard {
    index: 0,
    maximum_network_interfaces: 3,
}];
const ONE_CARD_4: &[NetworkCard] = &[NetworkCard {
    index: 0,
    maximum_network_interfaces: 4,
}];
const ONE_CARD_8: &[NetworkCard] = &[NetworkCard {
    index: 0,
    maximum_network_interfaces: 8,
}];
const ONE_CARD_15: &[NetworkCard] = &[NetworkCard {
    index: 0,
    maximum_network_interfaces: 15,
}];
const TWO_CARDS_8: &[NetworkCard] = &[
    NetworkCard {
        index: 0,
        maximum_network_interfaces: 8,
    },
    NetworkCard {
        index: 1,
        maximum_network_interfaces: 8,
    },
];

const fn nitro(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    enis: u32,
    ipv4: u32,
    cards: &'static [NetworkCard],
) -> InstanceTypeInfo {
    InstanceTypeInfo {
        name,
        vcpus,
        memory_mib,
        hypervisor: Hypervisor::Nitro,
        bare_metal: false,
        maximum_network_interfaces: enis,
        ipv4_addresses_per_interface: ipv4,
        ipv6_addresses_per_interface: ipv4,
        default_network_card_index: 0,
        network_cards: cards,
        nvme: true,
        maximum_ebs_attachments: 27,
        attachment_limit_type: AttachmentLimitType::Shared,
    }
}

/// The built-in table. Values are EC2's published limits.
pub static INSTANCE_TYPES: &[InstanceTypeInfo] = &[
    nitro("t3.medium", 2, 4096, 3, 6, ONE_CARD_3),
    nitro("t3.large", 2, 8192, 3, 12, ONE_CARD_3),
    nitro("m5.large", 2, 8192, 3, 10, ONE_CARD_3),
    nitro("m5.xlarge", 4, 16384, 4, 15, ONE_CARD_4),
    nitro("m5.2xlarge", 8, 32768, 4, 15, ONE_CARD_4),
    nitro("m5.4xlarge", 16, 65536, 8, 30, ONE_CARD_8),
    nitro("c5.large", 2, 4096, 3, 10, ONE_CARD_3),
    nitro("c5.18xlarge", 72, 147456, 15, 50, ONE_CARD_15),
    nitro("m6i.large", 2, 8192, 3, 10, ONE_CARD_3),
    nitro("m6i.32xlarge", 128, 524288, 15, 50, ONE_CARD_15),
    // Multi-network-card type: 16 ENIs over two cards of 8.
    nitro("c6in.32xlarge", 128, 262144, 16, 50, TWO_CARDS_8),
    InstanceTypeInfo {
        name: "m7i.48xlarge",
        maximum_ebs_attachments: 128,
        attachment_limit_type: AttachmentLimitType::Dedicated,
        ..nitro("m7i.48xlarge", 192, 786432, 15, 50, ONE_CARD_15)
    },
    // Xen (non-Nitro): no prefix delegation, no NVMe; EBS shows up under the requested name.
    InstanceTypeInfo {
        name: "m4.large",
        vcpus: 2,
        memory_mib: 8192,
        hypervisor: Hypervisor::Xen,
        bare_metal: false,
        maximum_network_interfaces: 2,
        ipv4_addresses_per_interface: 10,
        ipv6_addresses_per_interface: 10,
        default_network_card_index: 0,
        network_cards: ONE_CARD_2,
        nvme: false,
        maximum_ebs_attachments: 39,
        attachment_limit_type: AttachmentLimitType::Dedicated,
    },
];

/// Looks an instance type up in the built-in table.
pub fn lookup(name: &str) -> Option<&'static InstanceTypeInfo> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_types_we_promise() {
        for t in [
            "t3.medium",
            "m5.large",
            "m5.xlarge",
            "m5.4xlarge",
            "c5.18xlarge",
            "m6i.32xlarge",
            "c6in.32xlarge",
        ] {
            assert!(lookup(t).is_some(), "{t} missing");
        }
        assert!(lookup("m5.bogus").is_none());
    }

    #[test]
    fn max_pods_matches_upstream_formula() {
        let cases = [
            ("t3.medium", 17),
            ("m5.large", 29),
            ("m5.xlarge", 58),
            ("m5.4xlarge", 234),
            ("c5.18xlarge", 737),
        ];
        for (t, want) in cases {
            assert_eq!(lookup(t).map(|i| i.max_pods()), Some(want), "{t}");
        }
    }

    #[test]
    fn cards_add_up() {
        for t in INSTANCE_TYPES {
            let sum: u32 = t
                .network_cards
                .iter()
                .map(|c| c.maximum_network_interfaces)
                .sum();
            assert_eq!(sum, t.maximum_network_interfaces, "{}", t.name);
        }
        let multi = lookup("c6in.32xlarge").expect("in table");
        assert_eq!(multi.default_card_enis(), 8);
        assert_eq!(multi.card_enis(1), Some(8));
        assert_eq!(multi.card_enis(2), None);
        assert!(
            !lookup("m4.large")
                .expect("in table")
                .supports_prefix_delegation()
        );
    }
}
