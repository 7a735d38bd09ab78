//! Device names for AttachVolume and the node's attachment limit: pure decisions.

use std::collections::BTreeSet;

/// Attachment names in the order upstream found safe "by trial and error": `/dev/xvdaa…xvdbz`
/// first (never the `/dev/xvd[a-z]` / `/dev/sd*` names that collide on Xen), then `xvdda…xvddx`,
/// then `xvdb…xvdz`. `/dev/xvda` (the root) and `/dev/xvdc?` are never used.
pub fn names() -> Vec<String> {
    let mut v = Vec::new();
    for second in ['a', 'b'] {
        for c in 'a'..='z' {
            v.push(format!("/dev/xvd{second}{c}"));
        }
    }
    for c in 'a'..='x' {
        v.push(format!("/dev/xvdd{c}"));
    }
    for c in 'b'..='z' {
        v.push(format!("/dev/xvd{c}"));
    }
    v
}

/// The first name in [`names`] order that is neither in use on the instance nor reserved by an
/// attach in flight; names that recently failed ("likely bad") only when nothing else is left.
pub fn next_name(
    in_use: &BTreeSet<String>,
    in_flight: &BTreeSet<String>,
    likely_bad: &BTreeSet<String>,
) -> Option<String> {
    let free: Vec<String> = names()
        .into_iter()
        .filter(|n| !in_use.contains(n) && !in_flight.contains(n))
        .collect();
    free.iter()
        .find(|n| !likely_bad.contains(*n))
        .or_else(|| free.first())
        .cloned()
}

/// How many volumes the node can take (CSINode allocatable), as upstream computes it: the
/// instance type's EBS attachments, minus the boot volume and volumes mapped at boot, minus
/// the extra ENIs when ENIs and volumes share the slots (most Nitro types); never below 1.
/// `override_limit` (`--volume-attach-limit`) wins; `reserved` (`--reserved-volume-attachments`)
/// replaces the boot-time count.
pub fn max_volumes(
    ebs_attachments: u32,
    shared: bool,
    enis: u32,
    boot_mapped: u32,
    reserved: Option<u32>,
    override_limit: Option<u32>,
) -> u32 {
    if let Some(l) = override_limit {
        return l.max(1);
    }
    let reserved = reserved.unwrap_or(boot_mapped + 1);
    let eni_slots = if shared { enis.saturating_sub(1) } else { 0 };
    ebs_attachments
        .saturating_sub(reserved)
        .saturating_sub(eni_slots)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_name_list() {
        let n = names();
        assert_eq!(n.len(), 52 + 24 + 25);
        assert_eq!(n[0], "/dev/xvdaa");
        assert_eq!(n[52], "/dev/xvdda");
        assert_eq!(n.last().map(String::as_str), Some("/dev/xvdz"));
        assert!(!n.contains(&"/dev/xvda".to_string()));
        assert!(
            !n.iter()
                .any(|x| x.len() == 11 && x.starts_with("/dev/xvdc"))
        );
        assert_eq!(n.iter().collect::<BTreeSet<_>>().len(), n.len(), "unique");
    }

    #[test]
    fn allocation() {
        let none = set(&[]);
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], Option<&'a str>);
        let cases: &[Case] = &[
            (&[], &[], &[], Some("/dev/xvdaa")),
            (&["/dev/xvda", "/dev/xvdaa"], &[], &[], Some("/dev/xvdab")),
            (&["/dev/xvdaa"], &["/dev/xvdab"], &[], Some("/dev/xvdac")),
            (&[], &[], &["/dev/xvdaa"], Some("/dev/xvdab")),
        ];
        for (used, flight, bad, want) in cases {
            assert_eq!(
                next_name(&set(used), &set(flight), &set(bad)).as_deref(),
                *want,
                "{used:?} {flight:?} {bad:?}"
            );
        }
        // Everything used but one likely-bad name: that one.
        let all: BTreeSet<String> = names().into_iter().skip(1).collect();
        assert_eq!(
            next_name(&all, &none, &set(&["/dev/xvdaa"])).as_deref(),
            Some("/dev/xvdaa")
        );
        let every: BTreeSet<String> = names().into_iter().collect();
        assert_eq!(next_name(&every, &none, &none), None);
    }

    #[test]
    fn attachment_limits() {
        // (attachments, shared, ENIs, boot-mapped, reserved, override) → max
        let cases = [
            ((27, true, 1, 0, None, None), 26), // m5.large, one ENI: 27 − root
            ((27, true, 3, 0, None, None), 24), // ipamd attached two more ENIs
            ((27, true, 3, 1, None, None), 23), // and a volume mapped at boot
            ((39, false, 3, 0, None, None), 38), // Xen m4.large: dedicated
            ((128, false, 15, 0, None, None), 127), // m7i.48xlarge: dedicated
            ((27, true, 3, 0, Some(5), None), 20), // --reserved-volume-attachments
            ((27, true, 40, 0, None, None), 1), // never below 1
            ((27, true, 3, 0, None, Some(10)), 10), // --volume-attach-limit
            ((27, true, 3, 0, None, Some(0)), 1),
        ];
        for ((a, s, e, b, r, o), want) in cases {
            assert_eq!(
                max_volumes(a, s, e, b, r, o),
                want,
                "{a} {s} {e} {b} {r:?} {o:?}"
            );
        }
    }
}
