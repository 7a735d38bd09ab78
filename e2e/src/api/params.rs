//! EC2 Query API parameters: `Action=…&Version=…&Foo.1.Bar=…` as a flat map with typed getters.

use crate::sim::error::{ApiError, ApiResult};
use crate::sim::filter::Filter;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

#[derive(Debug, Clone, Default)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn parse(body: &[u8]) -> Self {
        Params(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn req(&self, k: &str) -> ApiResult<&str> {
        self.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::missing(k))
    }

    pub fn num<T: FromStr>(&self, k: &str) -> ApiResult<Option<T>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                ApiError::invalid_param(format!(
                    "Value ({v}) for parameter {k} is invalid. Expected a number."
                ))
            }),
        }
    }

    pub fn bool(&self, k: &str) -> ApiResult<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid_param(format!(
                "Value ({v}) for parameter {k} is invalid. Expected a boolean."
            ))),
        }
    }

    pub fn parsed<T: FromStr>(&self, k: &str, what: &str) -> ApiResult<Option<T>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::invalid_param(format!(
                    "Value ({v}) for parameter {k} is not a valid {what}"
                ))
            }),
        }
    }

    /// The member numbers N present under `prefix.N…`, in numeric order.
    pub fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        let p = format!("{prefix}.");
        self.0
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .filter_map(|(k, _)| k[p.len()..].split('.').next()?.parse().ok())
            .collect()
    }

    /// `prefix.1`, `prefix.2`, … (a flattened list of strings).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(String::from))
            .collect()
    }

    /// `prefix.N.member` for every N.
    pub fn list_of(&self, prefix: &str, member: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| {
                self.get(&format!("{prefix}.{n}.{member}"))
                    .map(String::from)
            })
            .collect()
    }

    pub fn filters(&self) -> ApiResult<Vec<Filter>> {
        self.indices("Filter")
            .into_iter()
            .map(|n| {
                let name = self.req(&format!("Filter.{n}.Name"))?.to_string();
                Ok(Filter {
                    name,
                    values: self.list(&format!("Filter.{n}.Value")),
                })
            })
            .collect()
    }

    /// `Tag.N.Key` / `Tag.N.Value` under `prefix`.
    pub fn tags(&self, prefix: &str) -> ApiResult<Vec<(String, Option<String>)>> {
        self.indices(prefix)
            .into_iter()
            .map(|n| {
                let k = self.req(&format!("{prefix}.{n}.Key"))?.to_string();
                Ok((
                    k,
                    self.get(&format!("{prefix}.{n}.Value")).map(String::from),
                ))
            })
            .collect()
    }

    /// `TagSpecification.N.ResourceType` + `TagSpecification.N.Tag.M.{Key,Value}`.
    pub fn tag_specs(&self) -> ApiResult<Vec<crate::sim::TagSpec>> {
        self.indices("TagSpecification")
            .into_iter()
            .map(|n| {
                let rt = self
                    .req(&format!("TagSpecification.{n}.ResourceType"))?
                    .to_string();
                let tags = self
                    .tags(&format!("TagSpecification.{n}.Tag"))?
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect();
                Ok((rt, tags))
            })
            .collect()
    }

    /// Whether a Describe call is narrowed (ids, filters or paging), for throttling classes.
    pub fn narrowed(&self) -> bool {
        self.0
            .keys()
            .any(|k| k != "Action" && k != "Version" && k != "DryRun")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_filters_and_tags() {
        let p = Params::parse(
            b"Action=X&Filter.1.Name=status&Filter.1.Value.1=available&Filter.1.Value.2=in-use&Filter.10.Name=tag-key&Filter.10.Value.1=k\
              &Filter.2.Name=subnet-id&Filter.2.Value.1=subnet-1&PrivateIpAddress.2=10.0.0.6&PrivateIpAddress.1=10.0.0.5\
              &TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=b%2Fc",
        );
        let f = p.filters().expect("filters");
        assert_eq!(
            f.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["status", "subnet-id", "tag-key"]
        );
        assert_eq!(f[0].values, ["available", "in-use"]);
        assert_eq!(p.list("PrivateIpAddress"), ["10.0.0.5", "10.0.0.6"]);
        assert_eq!(
            p.tag_specs().expect("tags"),
            vec![(
                "volume".to_string(),
                vec![("a".to_string(), "b/c".to_string())]
            )]
        );
        assert!(p.num::<u32>("Action").is_err());
        assert!(p.narrowed());
        assert!(!Params::parse(b"Action=DescribeVolumes&Version=2016-11-15").narrowed());
    }
}
