//! EC2 API errors: an AWS error code, a message and the HTTP status EC2 uses for it.

use std::fmt;

/// An error as EC2 reports it (`<Response><Errors><Error><Code>…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        let status = match code {
            "InternalError" => 500,
            "Unavailable" | "RequestLimitExceeded" => 503,
            "UnauthorizedOperation" => 403,
            _ => 400,
        };
        ApiError {
            code: code.to_string(),
            message: message.into(),
            status,
        }
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }

    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    pub fn combination(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterCombination", message)
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        let (code, what) = match kind {
            "eni" => ("InvalidNetworkInterfaceID.NotFound", "network interface"),
            "instance" => ("InvalidInstanceID.NotFound", "instance ID"),
            "subnet" => ("InvalidSubnetID.NotFound", "subnet ID"),
            "vpc" => ("InvalidVpcID.NotFound", "vpc ID"),
            "sg" => ("InvalidGroup.NotFound", "security group"),
            "volume" => ("InvalidVolume.NotFound", "volume"),
            "snapshot" => ("InvalidSnapshot.NotFound", "snapshot"),
            "attachment" => ("InvalidAttachmentID.NotFound", "attachment ID"),
            "az" => ("InvalidParameterValue", "availability zone"),
            _ => ("InvalidID", "resource"),
        };
        Self::new(code, format!("The {what} '{id}' does not exist"))
    }

    pub fn malformed(kind: &str, id: &str) -> Self {
        let code = match kind {
            "eni" => "InvalidNetworkInterfaceID.Malformed",
            "instance" => "InvalidInstanceID.Malformed",
            "subnet" => "InvalidSubnetID.Malformed",
            "volume" => "InvalidVolumeID.Malformed",
            "snapshot" => "InvalidSnapshotID.Malformed",
            _ => "InvalidID",
        };
        Self::new(code, format!("Invalid id: \"{id}\""))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
