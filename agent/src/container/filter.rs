//! Which containers' logs are collected: the `ferry.enable=false` opt-out label and the
//! `containers_include` / `containers_exclude` selectors of the configuration.
//!
//! Selector syntax (globs as in `include`: `*`, `?`, `[abc]`):
//! - `name:<glob>` matches the container name (without Docker's leading `/`), e.g. `name:web-*`;
//! - `image:<glob>` matches the image the container was created from, as given to
//!   `docker run` (`Config.Image`), e.g. `image:nginx*` matches `nginx:1.27`;
//! - `label:<key>` matches when the label exists, `label:<key>=<glob>` when its value matches,
//!   e.g. `label:app=web`.
//!
//! A container is collected unless it carries `ferry.enable=false`, and, when `containers_include`
//! is not empty, only if some include selector matches, and never if an exclude selector matches.

use glob::Pattern;

use super::ContainerMeta;

/// One parsed selector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selector {
    Name(Pattern),
    Image(Pattern),
    Label { key: String, value: Option<Pattern> },
}

impl Selector {
    /// Parses `name:…`, `image:…` or `label:key[=glob]`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let glob = |g: &str| Pattern::new(g).map_err(|e| format!("{g:?} is not a valid glob: {e}"));
        let Some((kind, rest)) = s.split_once(':') else {
            return Err("expected `name:<glob>`, `image:<glob>` or `label:<key>[=<glob>]`".into());
        };
        match kind {
            "name" => Ok(Selector::Name(glob(rest)?)),
            "image" => Ok(Selector::Image(glob(rest)?)),
            "label" => {
                let (key, value) = match rest.split_once('=') {
                    Some((k, v)) => (k, Some(glob(v)?)),
                    None => (rest, None),
                };
                if key.is_empty() {
                    return Err("the label key is empty".into());
                }
                Ok(Selector::Label {
                    key: key.to_string(),
                    value,
                })
            }
            other => Err(format!(
                "unknown selector kind {other:?} (use name:, image: or label:)"
            )),
        }
    }

    pub fn matches(&self, meta: &ContainerMeta) -> bool {
        match self {
            Selector::Name(p) => meta.name.as_deref().is_some_and(|n| p.matches(n)),
            Selector::Image(p) => meta.image.as_deref().is_some_and(|i| p.matches(i)),
            Selector::Label { key, value } => match (meta.labels.get(key), value) {
                (Some(_), None) => true,
                (Some(v), Some(p)) => p.matches(v),
                (None, _) => false,
            },
        }
    }
}

/// The include and exclude selectors of a configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    include: Vec<Selector>,
    exclude: Vec<Selector>,
}

impl Filter {
    /// From validated configuration lists (invalid entries, which `validate` refuses, are skipped).
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        let parse = |list: &[String]| {
            list.iter()
                .filter_map(|s| Selector::parse(s).ok())
                .collect::<Vec<_>>()
        };
        Filter {
            include: parse(include),
            exclude: parse(exclude),
        }
    }

    /// Whether the container's logs are collected.
    pub fn wants(&self, meta: &ContainerMeta) -> bool {
        if meta.opted_out() {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|s| s.matches(meta)) {
            return false;
        }
        !self.exclude.iter().any(|s| s.matches(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, image: &str, labels: &[(&str, &str)]) -> ContainerMeta {
        ContainerMeta {
            id: "id".into(),
            name: Some(name.into()),
            image: Some(image.into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_match_name_image_and_labels_with_globs() {
        let web = meta("web-1", "nginx:1.27", &[("app", "web"), ("tier", "front")]);
        let db = meta("db", "postgres:16", &[("app", "db")]);
        for (sel, on_web, on_db) in [
            ("name:web-*", true, false),
            ("image:nginx*", true, false),
            ("image:*:16", false, true),
            ("label:app=web", true, false),
            ("label:app=*", true, true),
            ("label:tier", true, false),
        ] {
            let s = Selector::parse(sel).unwrap();
            assert_eq!(s.matches(&web), on_web, "{sel} on web");
            assert_eq!(s.matches(&db), on_db, "{sel} on db");
        }
    }

    #[test]
    fn bad_selectors_are_refused_with_a_reason() {
        for bad in [
            "web-*",
            "nmae:web",
            "label:",
            "label:=x",
            "name:[",
            "label:a=[",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn opt_out_label_include_and_exclude_decide_together() {
        let web = meta("web-1", "nginx:1.27", &[("app", "web")]);
        let off = meta(
            "web-2",
            "nginx:1.27",
            &[("app", "web"), ("ferry.enable", "false")],
        );
        let db = meta("db", "postgres:16", &[]);
        let all = Filter::default();
        assert!(all.wants(&web) && all.wants(&db) && !all.wants(&off));
        let f = Filter::new(&["label:app=web".into()], &["name:*-2".into()]);
        assert!(f.wants(&web));
        assert!(!f.wants(&db), "not included");
        let f = Filter::new(&[], &["image:postgres*".into()]);
        assert!(f.wants(&web) && !f.wants(&db));
    }
}
