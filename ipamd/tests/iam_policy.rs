//! The node role's IAM policy (`deploy/iam/networking-policy.json`) lists exactly the EC2 actions
//! ipamd's code calls: adding an EC2 call without the permission, or keeping a permission no code
//! needs, fails here. Calls are found in the source as `.ec2.<operation>(` (every EC2 request goes
//! through the client field `ec2`), operation names turned into API action names.

use e2e::iam::{assert_exact, called, policy_actions};

/// Permissions a request needs beyond its own action: tagging an ENI in its CreateNetworkInterface
/// (TagSpecifications) needs ec2:CreateTags, limited in the policy to that create action.
const IMPLIED: &[&str] = &["ec2:CreateTags"];

#[test]
fn the_node_policy_lists_exactly_the_ec2_actions_ipamd_calls() {
    let root = e2e::package_dir(env!("CARGO_MANIFEST_DIR"));
    let code = called(&root.join("src"), "ec2");
    assert!(
        code.contains("ec2:CreateNetworkInterface") && code.len() >= 8,
        "the source scan found too little: {code:?}"
    );
    let policy = policy_actions(&root.join("../deploy/iam/networking-policy.json"));
    assert_exact("ipamd", &code, &policy, IMPLIED);
}
