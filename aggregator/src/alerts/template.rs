//! Alert label and annotation templates: the part of Go's `text/template` that Prometheus
//! rule files use — `{{ $labels.x }}`, `{{ $value }}`, `{{ .Labels.x }}`, `{{ .Value }}`,
//! string and number literals, pipelines (`{{ $value | humanize }}`) and the functions
//! `humanize`, `humanizePercentage`, `humanizeDuration`, `printf`, `toUpper`, `toLower`,
//! with `{{-`/`-}}` trimming. Parsed once at load, so anything else is refused there, naming
//! the construct; values print the way Go prints them (`%v` of a float64).

use std::fmt::Write as _;

use super::promql::{label, Labels};

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Label(String),
    Value,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Humanize,
    HumanizePercentage,
    HumanizeDuration,
    Printf,
    ToUpper,
    ToLower,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {reason}")]
pub(crate) struct TemplateError {
    pub(crate) template: String,
    pub(crate) reason: String,
}

/// A value flowing through a pipeline.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(f64),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(v) => go_float(*v),
        }
    }

    fn number(&self) -> f64 {
        match self {
            Val::Num(v) => *v,
            Val::Str(s) => s.trim().parse().unwrap_or(f64::NAN),
        }
    }
}

impl Template {
    pub(crate) fn parse(src: &str) -> Result<Template, TemplateError> {
        let err = |reason: String| TemplateError {
            template: src.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next {
                text = text.trim_start();
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| err("an action is not closed with }}".into()))?;
            let mut action = &after[..close];
            if let Some(a) = action.strip_prefix('-') {
                text = text.trim_end();
                action = a;
            }
            trim_next = false;
            if let Some(a) = action.strip_suffix('-') {
                trim_next = true;
                action = a;
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_string()));
            }
            parts.push(Part::Action(parse_pipeline(action.trim()).map_err(err)?));
            rest = &after[close + 2..];
        }
        let text = if trim_next { rest.trim_start() } else { rest };
        if !text.is_empty() {
            parts.push(Part::Text(text.to_string()));
        }
        Ok(Template(parts))
    }

    /// Expands with the alert's labels (`__name__` dropped) and value.
    pub(crate) fn render(&self, labels: &Labels, value: f64) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(commands) => {
                    let mut carried: Option<Val> = None;
                    for command in commands {
                        carried = Some(run(command, carried.take(), labels, value));
                    }
                    if let Some(v) = carried {
                        out.push_str(&v.text());
                    }
                }
            }
        }
        out
    }
}

fn operand(o: &Operand, labels: &Labels, value: f64) -> Val {
    match o {
        Operand::Label(name) => Val::Str(label(labels, name).to_string()),
        Operand::Value => Val::Num(value),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(n) => Val::Num(*n),
    }
}

fn run(command: &Command, carried: Option<Val>, labels: &Labels, value: f64) -> Val {
    match command {
        Command::Operand(o) => operand(o, labels, value),
        Command::Call(func, args) => {
            let mut args: Vec<Val> = args.iter().map(|a| operand(a, labels, value)).collect();
            args.extend(carried);
            let first = args.first().cloned().unwrap_or(Val::Str(String::new()));
            match func {
                Func::Humanize => Val::Str(humanize(first.number())),
                Func::HumanizePercentage => Val::Str(format!("{}%", go_g4(first.number() * 100.0))),
                Func::HumanizeDuration => Val::Str(humanize_duration(first.number())),
                Func::ToUpper => Val::Str(first.text().to_uppercase()),
                Func::ToLower => Val::Str(first.text().to_lowercase()),
                Func::Printf => Val::Str(printf(&first.text(), &args[1..])),
            }
        }
    }
}

fn parse_pipeline(action: &str) -> Result<Vec<Command>, String> {
    if action.is_empty() {
        return Err("an empty action".into());
    }
    let tokens = tokenize(action)?;
    let mut commands = Vec::new();
    for segment in tokens.split(|t| t == "|") {
        let Some((head, args)) = segment.split_first() else {
            return Err("an empty pipeline stage".into());
        };
        let func = match head.as_str() {
            "humanize" => Some(Func::Humanize),
            "humanizePercentage" => Some(Func::HumanizePercentage),
            "humanizeDuration" => Some(Func::HumanizeDuration),
            "printf" => Some(Func::Printf),
            "toUpper" => Some(Func::ToUpper),
            "toLower" => Some(Func::ToLower),
            _ => None,
        };
        commands.push(match func {
            Some(f) => Command::Call(
                f,
                args.iter()
                    .map(|a| parse_operand(a))
                    .collect::<Result<_, _>>()?,
            ),
            None if args.is_empty() => Command::Operand(parse_operand(head)?),
            None => return Err(format!("`{head}` is not a supported function")),
        });
    }
    Ok(commands)
}

fn parse_operand(token: &str) -> Result<Operand, String> {
    if let Some(s) = token.strip_prefix('"') {
        return Ok(Operand::Str(s.to_string()));
    }
    if let Some(name) = token
        .strip_prefix("$labels.")
        .or_else(|| token.strip_prefix(".Labels."))
    {
        return Ok(Operand::Label(name.to_string()));
    }
    match token {
        "$value" | ".Value" => return Ok(Operand::Value),
        _ => {}
    }
    if let Ok(n) = token.parse::<f64>() {
        return Ok(Operand::Num(n));
    }
    Err(format!(
        "`{token}` is not supported (use $labels.<name>, $value, a string or a number)"
    ))
}

/// Splits an action into words, `|`, and string literals (kept with their opening quote).
fn tokenize(action: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' => {
                chars.next();
            }
            '|' => {
                chars.next();
                tokens.push("|".to_string());
            }
            '"' | '`' => {
                let quote = c;
                chars.next();
                let mut s = String::from('"');
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if quote == '"' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c) => s.push(c),
                            None => break,
                        },
                        c if c == quote => {
                            closed = true;
                            break;
                        }
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err("a string is not closed".into());
                }
                tokens.push(s);
            }
            '(' | ')' => return Err("parentheses are not supported".into()),
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '|' || c == '\t' || c == '\n' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                if word == ":=" || word == "=" {
                    return Err("variable assignment is not supported".into());
                }
                if matches!(
                    word.as_str(),
                    "if" | "range" | "with" | "end" | "else" | "define" | "template" | "block"
                ) {
                    return Err(format!("`{word}` is not supported"));
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

/// A float64 the way Go's `%v` prints it: shortest digits, exponent form when the
/// exponent is below -4 or at least 21.
pub(crate) fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..21).contains(&exp) {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    } else {
        format!("{v}")
    }
}

/// Go's `%.4g`.
fn go_g4(v: f64) -> String {
    go_g(v, 4)
}

/// Go's `%.<prec>g`: `prec` significant digits, trailing zeros dropped, exponent form when
/// the exponent is below -4 or at least `prec`.
fn go_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let prec = prec.max(1);
    let e = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= prec as i32 {
        format!(
            "{}e{}{:02}",
            trim(mantissa),
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

/// Prometheus's `humanize`: SI prefixes, four significant digits.
pub(crate) fn humanize(mut v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return go_g4(v);
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g4(v))
}

/// Prometheus's `humanizeDuration` (seconds in, `1d 2h 3m 4s` out).
pub(crate) fn humanize_duration(mut v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return go_g4(v);
    }
    if v == 0.0 {
        return format!("{}s", go_g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = v as i64;
        let (seconds, minutes, hours, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", go_g4(v))
        };
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g4(v))
}

/// `printf` with the verbs rule files use: `%s`, `%v`, `%d`, `%f`/`%.Nf`, `%g`/`%.Ng`, `%%`.
fn printf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut precision = String::new();
        if chars.peek() == Some(&'.') {
            chars.next();
            while let Some(&d) = chars.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                precision.push(d);
                chars.next();
            }
        }
        let precision: Option<usize> = precision.parse().ok();
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => {
                let Some(arg) = args.next() else {
                    let _ = write!(out, "%!{verb}(MISSING)");
                    continue;
                };
                match verb {
                    'f' => {
                        let _ = write!(out, "{:.*}", precision.unwrap_or(6), arg.number());
                    }
                    'g' => out.push_str(&match precision {
                        Some(p) => go_g(arg.number(), p),
                        None => go_float(arg.number()),
                    }),
                    'd' => {
                        let _ = write!(out, "{}", arg.number() as i64);
                    }
                    _ => out.push_str(&arg.text()),
                }
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::promql::make_labels;

    #[test]
    fn renders_labels_values_and_humanized_figures() {
        let labels = make_labels([("name", "web"), ("host", "n1")]);
        let t = Template::parse(
            "{{ $labels.name }} on {{ .Labels.host }}: {{ $value | humanize }} \
             ({{ humanizePercentage $value }}) {{- \" x\" }}",
        )
        .unwrap();
        assert_eq!(t.render(&labels, 0.9321), "web on n1: 932.1m (93.21%) x");
        assert_eq!(humanize(1234567.0), "1.235M");
        assert_eq!(humanize(0.0), "0");
        assert_eq!(humanize_duration(90061.0), "1d 1h 1m 1s");
        assert_eq!(humanize_duration(1.5), "1.5s");
        assert_eq!(humanize_duration(0.25), "250ms");
        assert_eq!(go_float(1e6), "1000000");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_g4(12345.0), "1.234e+04");
        let p = Template::parse("{{ printf \"%.2f\" $value }}%").unwrap();
        assert_eq!(p.render(&labels, 1.23456), "1.23%");
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        for (src, reason) in [
            ("{{ if $value }}x{{ end }}", "`if` is not supported"),
            (
                "{{ $value | title }}",
                "`title` is not supported (use $labels.<name>, $value, a string or a number)",
            ),
            ("{{ $labels.x ", "an action is not closed with }}"),
            ("{{ query \"up\" }}", "`query` is not a supported function"),
        ] {
            assert_eq!(Template::parse(src).unwrap_err().reason, reason, "{src}");
        }
    }
}
