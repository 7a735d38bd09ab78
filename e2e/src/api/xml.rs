//! A small writer for EC2's XML responses (`<xSet><item>…</item></xSet>` lists).

use crate::sim::model::Tags;
use std::fmt::{Display, Write};
use std::time::SystemTime;

pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

#[derive(Default)]
pub struct Xml(pub String);

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

impl Xml {
    pub fn leaf(&mut self, tag: &str, v: impl Display) -> &mut Self {
        let _ = write!(self.0, "<{tag}>{}</{tag}>", escape(&v.to_string()));
        self
    }

    pub fn opt(&mut self, tag: &str, v: Option<impl Display>) -> &mut Self {
        if let Some(v) = v {
            self.leaf(tag, v);
        }
        self
    }

    pub fn time(&mut self, tag: &str, t: SystemTime) -> &mut Self {
        self.leaf(tag, iso8601(t))
    }

    pub fn node(&mut self, tag: &str, f: impl FnOnce(&mut Xml)) -> &mut Self {
        let _ = write!(self.0, "<{tag}>");
        f(self);
        let _ = write!(self.0, "</{tag}>");
        self
    }

    pub fn set<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Xml, T),
    ) -> &mut Self {
        self.node(tag, |x| {
            for it in items {
                x.node("item", |x| f(x, it));
            }
        })
    }

    pub fn tags(&mut self, tags: &Tags) -> &mut Self {
        self.set("tagSet", tags, |x, (k, v)| {
            x.leaf("key", k).leaf("value", v);
        })
    }
}

/// `2026-11-21T14:09:00.000Z`.
pub fn iso8601(t: SystemTime) -> String {
    nodewire_aws::time::format(t, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_millis(1_795_269_600_123)),
            "2026-11-21T14:00:00.123Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn escapes() {
        let mut x = Xml::default();
        x.leaf("description", "a<b & 'c'");
        assert_eq!(x.0, "<description>a&lt;b &amp; &apos;c&apos;</description>");
    }
}
