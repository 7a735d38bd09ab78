//! The CSI controller's IAM policy (`deploy/iam/storage-policy.json`) lists exactly the EC2
//! actions ebs-csi's code calls (every request goes through `Ec2`'s field `client`).

use e2e::iam::{assert_exact, called, policy_actions};

#[test]
fn the_storage_policy_lists_exactly_the_ec2_actions_ebs_csi_calls() {
    let root = e2e::package_dir(env!("CARGO_MANIFEST_DIR"));
    let code = called(&root.join("src"), "client");
    assert!(
        code.contains("ec2:AttachVolume") && code.len() >= 12,
        "the source scan found too little: {code:?}"
    );
    let policy = policy_actions(&root.join("../deploy/iam/storage-policy.json"));
    assert_exact("ebs-csi", &code, &policy, &[]);
}
