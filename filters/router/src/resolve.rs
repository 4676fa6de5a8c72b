//! Resolution of a request's tier and model into a model group (and maybe a
//! pinned backend), with the errors a client gets when that is impossible.

use crate::config::{ConflictPolicy, ModelGroup, Routing};

/// What the client asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ask<'a> {
    pub tier: Option<&'a str>,
    pub model: Option<&'a str>,
    pub team: Option<&'a str>,
}

#[derive(Debug)]
pub enum Resolution<'a> {
    /// Neither a model nor a tier: Envoy's default route (the weighted split) decides.
    Default,
    Group {
        group: &'a ModelGroup,
        tier: Option<&'a str>,
        /// A backend the tier pins the group to.
        pinned: Option<&'a str>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    UnknownModel(String),
    UnknownTier(String),
    TierNotAllowed { tier: String },
    ModelNotInTier { model: String, tier: String },
}

impl RouteError {
    /// HTTP status, OpenAI error type and code.
    pub fn status(&self) -> (u32, &'static str, &'static str) {
        match self {
            Self::UnknownModel(_) => (404, "invalid_request_error", "model_not_found"),
            Self::UnknownTier(_) => (400, "invalid_request_error", "unknown_tier"),
            Self::TierNotAllowed { .. } => (403, "permission_error", "tier_not_allowed"),
            Self::ModelNotInTier { .. } => (400, "invalid_request_error", "model_not_in_tier"),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::UnknownModel(model) => format!("The model `{model}` does not exist or you do not have access to it."),
            Self::UnknownTier(tier) => format!("Unknown model tier `{tier}`."),
            Self::TierNotAllowed { tier } => format!("Your team may not use the `{tier}` tier."),
            Self::ModelNotInTier { model, tier } => format!("The model `{model}` is not served in the `{tier}` tier."),
        }
    }
}

pub fn resolve<'a>(routing: &'a Routing, ask: Ask<'a>) -> Result<Resolution<'a>, RouteError> {
    let model = ask.model.filter(|m| !m.is_empty() && *m != "auto");
    let tier = match ask.tier {
        Some(name) => {
            let settings = routing.tiers.get_key_value(name).ok_or_else(|| RouteError::UnknownTier(name.to_string()))?;
            let (_, config) = settings;
            if !config.allowed_teams.is_empty() && !ask.team.is_some_and(|team| config.allowed_teams.iter().any(|t| t == team)) {
                return Err(RouteError::TierNotAllowed { tier: name.to_string() });
            }
            Some(settings)
        }
        None => None,
    };
    let tier_group = |(name, config): (&'a String, &'a crate::config::TierConfig)| {
        routing.group(&config.model).map(|group| Resolution::Group {
            group,
            tier: Some(name.as_str()),
            pinned: config.backend.as_deref(),
        })
    };
    let Some(model) = model else {
        return Ok(tier.and_then(tier_group).unwrap_or(Resolution::Default));
    };
    let group = routing.group(model).ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
    let Some((tier_name, config)) = tier else {
        return Ok(Resolution::Group { group, tier: None, pinned: None });
    };
    if group.name == config.model {
        return Ok(Resolution::Group { group, tier: Some(tier_name), pinned: config.backend.as_deref() });
    }
    let accepted = config.models.iter().any(|m| routing.group(m).is_some_and(|g| g.name == group.name));
    if accepted {
        return Ok(Resolution::Group { group, tier: Some(tier_name), pinned: None });
    }
    match routing.conflict {
        ConflictPolicy::PreferModel => Ok(Resolution::Group { group, tier: Some(tier_name), pinned: None }),
        ConflictPolicy::PreferTier => tier_group((tier_name, config)).ok_or_else(|| RouteError::UnknownModel(config.model.clone())),
        ConflictPolicy::Reject => Err(RouteError::ModelNotInTier { model: model.to_string(), tier: tier_name.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouterConfig;

    fn routing(extra: &str) -> Routing {
        let json = format!(
            r#"{{
            "backends": {{"vllm-8b": {{"provider": "openai"}}, "vllm-70b": {{"provider": "openai"}},
                          "nim-70b": {{"provider": "openai"}}, "openai": {{"provider": "openai"}}}},
            "models": {{
                "llama-8b": {{"targets": [{{"backend": "vllm-8b"}}]}},
                "llama-70b": {{"targets": [{{"backend": "vllm-70b", "weight": 90}}, {{"backend": "nim-70b", "weight": 10}}],
                               "fallbacks": ["gpt-4-turbo"]}},
                "gpt-4-turbo": {{"targets": [{{"backend": "openai"}}]}}
            }},
            "aliases": {{"llama3-70b": "llama-70b"}},
            "tiers": {{"fast": {{"model": "llama-8b"}},
                       "quality": {{"model": "llama-70b", "backend": "vllm-70b", "models": ["gpt-4-turbo"]}},
                       "vip": {{"model": "gpt-4-turbo", "allowed_teams": ["research"]}}}}
            {extra}
        }}"#
        );
        let config: RouterConfig = tollgate_core::config::parse(json.as_bytes()).unwrap();
        Routing::compile(config, &|_| None).unwrap()
    }

    fn group_of(resolution: Result<Resolution<'_>, RouteError>) -> (String, Option<String>, Option<String>) {
        match resolution.unwrap() {
            Resolution::Group { group, tier, pinned } => (group.name.clone(), tier.map(String::from), pinned.map(String::from)),
            Resolution::Default => ("<default>".into(), None, None),
        }
    }

    fn ask<'a>(tier: Option<&'a str>, model: Option<&'a str>) -> Ask<'a> {
        Ask { tier, model, team: None }
    }

    #[test]
    fn model_tier_and_default_cases() {
        let r = routing("");
        assert_eq!(group_of(resolve(&r, ask(None, Some("llama-70b")))).0, "llama-70b");
        assert_eq!(group_of(resolve(&r, ask(None, Some("llama3-70b")))).0, "llama-70b", "alias");
        assert_eq!(group_of(resolve(&r, ask(Some("fast"), None))), ("llama-8b".into(), Some("fast".into()), None));
        assert_eq!(group_of(resolve(&r, ask(Some("fast"), Some("auto")))).0, "llama-8b");
        assert_eq!(
            group_of(resolve(&r, ask(Some("quality"), None))),
            ("llama-70b".into(), Some("quality".into()), Some("vllm-70b".into()))
        );
        assert_eq!(group_of(resolve(&r, ask(None, None))).0, "<default>");
        assert_eq!(group_of(resolve(&r, ask(None, Some("auto")))).0, "<default>");
    }

    #[test]
    fn unknown_names_are_client_errors() {
        let r = routing("");
        let e = resolve(&r, ask(None, Some("gpt-9"))).unwrap_err();
        assert_eq!(e.status(), (404, "invalid_request_error", "model_not_found"));
        assert!(e.message().contains("`gpt-9`"));
        assert_eq!(resolve(&r, ask(Some("turbo"), None)).unwrap_err().status().0, 400);
    }

    #[test]
    fn tiers_can_be_limited_to_teams() {
        let r = routing("");
        let e = resolve(&r, Ask { tier: Some("vip"), model: None, team: Some("sales") }).unwrap_err();
        assert_eq!(e.status(), (403, "permission_error", "tier_not_allowed"));
        assert!(resolve(&r, ask(Some("vip"), None)).is_err(), "no team at all is not allowed either");
        let ok = resolve(&r, Ask { tier: Some("vip"), model: None, team: Some("research") });
        assert_eq!(group_of(ok).0, "gpt-4-turbo");
    }

    #[test]
    fn tier_and_model_disagreement_follows_the_policy() {
        // quality accepts gpt-4-turbo explicitly: no conflict, and no pin.
        let r = routing("");
        assert_eq!(group_of(resolve(&r, ask(Some("quality"), Some("gpt-4-turbo")))).2, None);
        // fast does not accept llama-70b.
        assert_eq!(group_of(resolve(&r, ask(Some("fast"), Some("llama-70b")))).0, "llama-70b", "prefer-model by default");
        let r = routing(r#", "tier_model_conflict": "prefer-tier""#);
        assert_eq!(group_of(resolve(&r, ask(Some("fast"), Some("llama-70b")))).0, "llama-8b");
        let r = routing(r#", "tier_model_conflict": "reject""#);
        let e = resolve(&r, ask(Some("fast"), Some("llama-70b"))).unwrap_err();
        assert_eq!(e, RouteError::ModelNotInTier { model: "llama-70b".into(), tier: "fast".into() });
    }

    #[test]
    fn attempt_order_and_model_ids_follow_the_fallback_chain() {
        let r = routing("");
        let group = r.group("llama-70b").unwrap();
        assert_eq!(r.attempt_order(group, "nim-70b"), ["nim-70b", "vllm-70b", "openai"]);
        assert_eq!(r.model_for_backend(group, "openai"), Some("gpt-4-turbo"));
        assert_eq!(r.model_for_backend(group, "vllm-70b"), Some("llama-70b"));
        assert_eq!(r.model_for_backend(group, "vllm-8b"), None);
    }
}
