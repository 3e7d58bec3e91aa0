//! The PromQL subset ferry evaluates, over the in-memory [`History`]: instant and range
//! selectors (every matcher, `offset`), `rate`, `irate`, `increase`, `delta`, `resets`,
//! `changes`, `*_over_time`,
//! `absent`, `absent_over_time`, `time`, `clamp*`, `histogram_quantile`, the aggregations
//! `sum`/`avg`/`min`/`max`/`count`/`topk`/`bottomk` with `by`/`without`, and arithmetic,
//! comparison and set operators with `on`/`ignoring`/`group_left`/`group_right`/`bool`.
//!
//! Parsing is `promql-parser`'s; [`check`] walks the tree once at load and refuses anything
//! outside the subset (naming the construct), so [`eval`] never meets it. The semantics follow
//! Prometheus 2.x (closed range windows, 5 minute lookback, stale markers, extrapolated rates)
//! so that a rule file gives the same answers here and in a Prometheus.

// `Labels` keys hold a `OnceLock` (their nameless twin, built on demand), but their hash and
// equality read only the pairs and the precomputed hash, which never change.
#![allow(clippy::mutable_key_type)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::label::{MatchOp, Matcher, METRIC_NAME};
use promql_parser::parser::ast::{AggregateExpr, BinaryExpr, Call, LabelModifier, Offset};
use promql_parser::parser::token::{self, TokenType};
use promql_parser::parser::{Expr, VectorMatchCardinality, VectorSelector};

use super::history::{History, Series};
pub(crate) use super::labels::{label, Labels};
use super::labels::{FastMap, FastSet, Pair};

/// How far back an instant selector looks for a sample (Prometheus's default).
pub(crate) const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) labels: Labels,
    pub(crate) value: f64,
}

/// A range vector: each series' labels and its samples (time in ms, value), borrowed from
/// the history where they lie in one piece.
pub(crate) type Matrix<'h> = Vec<(Labels, Cow<'h, [(i64, f64)]>)>;

/// What an expression evaluates to.
#[derive(Debug, Clone)]
pub(crate) enum Value<'h> {
    Scalar(f64),
    Vector(Vec<Sample>),
    Matrix(Matrix<'h>),
}

/// Why an expression could not be evaluated (Prometheus fails the rule the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EvalError {
    #[error(
        "found duplicate series for the match group {0} on the {1} hand-side of the operation"
    )]
    DuplicateMatch(String, &'static str),
    #[error("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)")]
    ManyToMany,
    #[error("vector cannot contain metrics with the same labelset: {0}")]
    DuplicateOutput(String),
}

/// Why a query is outside the supported subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not supported by ferry's evaluator")]
pub(crate) struct Unsupported(pub(crate) String);

/// The labels as `{a="1", b="2"}` (for messages).
pub(crate) fn labels_text(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Builds sorted labels from pairs (empty values dropped, as Prometheus does).
pub(crate) fn make_labels<I, K, V>(pairs: I) -> Labels
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<Arc<str>>,
    V: Into<Arc<str>>,
{
    let mut v: Vec<Pair> = pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    Labels::from_sorted(v.into_boxed_slice())
}

fn drop_name(labels: &Labels) -> Labels {
    labels.without_name()
}

/// The labels kept (`on`/`by`: only `names`; otherwise all but `names` and `__name__`).
fn grouping(labels: &Labels, names: &[String], include: bool) -> Labels {
    if !include && names.is_empty() {
        return labels.without_name();
    }
    labels
        .iter()
        .filter(|(k, _)| {
            let listed = names.iter().any(|n| n == &**k);
            if include {
                listed
            } else {
                !listed && &**k != METRIC_NAME
            }
        })
        .cloned()
        .collect()
}

fn set_label(labels: &Labels, name: &str, value: &str) -> Labels {
    let mut v: Vec<Pair> = labels
        .iter()
        .filter(|(k, _)| &**k != name)
        .cloned()
        .collect();
    if !value.is_empty() {
        v.push((name.into(), value.into()));
        v.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Labels::from_sorted(v.into_boxed_slice())
}

const FUNCTIONS: [&str; 24] = [
    "rate",
    "resets",
    "changes",
    "irate",
    "increase",
    "delta",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "absent",
    "absent_over_time",
    "time",
    "clamp",
    "clamp_min",
    "clamp_max",
    "histogram_quantile",
    "vector",
];

/// Refuses anything [`eval`] does not implement, naming it.
pub(crate) fn check(expr: &Expr) -> Result<(), Unsupported> {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.id();
            let ok = [
                token::T_SUM,
                token::T_AVG,
                token::T_MIN,
                token::T_MAX,
                token::T_COUNT,
                token::T_TOPK,
                token::T_BOTTOMK,
            ];
            if !ok.contains(&op) {
                return Err(Unsupported(format!("the aggregation `{}`", a.op)));
            }
            if let Some(p) = &a.param {
                check(p)?;
            }
            check(&a.expr)
        }
        Expr::Unary(u) => check(&u.expr),
        Expr::Binary(b) => {
            let op = b.op.id();
            if op == token::T_ATAN2 {
                return Err(Unsupported("the operator `atan2`".into()));
            }
            if let Some(m) = &b.modifier {
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(Unsupported("the `fill` modifier".into()));
                }
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Paren(p) => check(&p.expr),
        Expr::Subquery(_) => Err(Unsupported("a subquery".into())),
        Expr::NumberLiteral(_) => Ok(()),
        Expr::StringLiteral(_) => Err(Unsupported("a string literal".into())),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs),
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return Err(Unsupported(format!("the function `{}`", c.func.name)));
            }
            for arg in &c.args.args {
                check(arg)?;
            }
            Ok(())
        }
        Expr::Extension(_) => Err(Unsupported("an extension expression".into())),
    }
}

fn check_selector(vs: &VectorSelector) -> Result<(), Unsupported> {
    if vs.at.is_some() {
        return Err(Unsupported("the `@` modifier".into()));
    }
    if matches!(vs.offset, Some(Offset::Neg(_))) {
        return Err(Unsupported("a negative offset".into()));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(Unsupported("`or` inside a selector".into()));
    }
    Ok(())
}

fn offset_ms(vs: &VectorSelector) -> i64 {
    match &vs.offset {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

/// Whether `series`, found under the selector's metric name, matches its matchers.
fn matches(vs: &VectorSelector, series: &Series) -> bool {
    vs.matchers
        .matchers
        .iter()
        .all(|m: &Matcher| m.is_match(label(&series.labels, &m.name)))
}

fn selected<'a, 'h: 'a>(
    vs: &'a VectorSelector,
    history: &'h History,
) -> impl Iterator<Item = &'h Series> + 'a {
    // The history's index by name does the name's check (`vs.name`, or an equality matcher
    // on `__name__`, which `matches` checks again).
    let name = vs.name.as_deref().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.as_str())
    });
    history.series(name).filter(move |s| matches(vs, s))
}

/// Evaluates `expr` at `t` (ms since the epoch).
pub(crate) fn eval<'h>(expr: &Expr, history: &'h History, t: i64) -> Result<Value<'h>, EvalError> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Value::Scalar(n.val),
        Expr::Paren(p) => eval(&p.expr, history, t)?,
        Expr::Unary(u) => match eval(&u.expr, history, t)? {
            Value::Scalar(v) => Value::Scalar(-v),
            Value::Vector(v) => Value::Vector(
                v.into_iter()
                    .map(|s| Sample {
                        labels: drop_name(&s.labels),
                        value: -s.value,
                    })
                    .collect(),
            ),
            m => m,
        },
        Expr::VectorSelector(vs) => {
            let at = t - offset_ms(vs);
            Value::Vector(
                selected(vs, history)
                    .filter_map(|s| {
                        s.at(at, LOOKBACK_MS).map(|value| Sample {
                            labels: s.labels.clone(),
                            value,
                        })
                    })
                    .collect(),
            )
        }
        Expr::MatrixSelector(ms) => {
            let end = t - offset_ms(&ms.vs);
            let start = end - ms.range.as_millis() as i64;
            Value::Matrix(
                selected(&ms.vs, history)
                    .filter_map(|s| {
                        let points = s.range(start, end);
                        (!points.is_empty()).then(|| (s.labels.clone(), points))
                    })
                    .collect(),
            )
        }
        Expr::Call(c) => call(c, history, t)?,
        Expr::Aggregate(a) => aggregate(a, history, t)?,
        Expr::Binary(b) => binary(b, history, t)?,
        // `check` refused these at load.
        Expr::Subquery(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {
            Value::Vector(Vec::new())
        }
    })
}

fn scalar_arg(expr: &Expr, history: &History, t: i64) -> Result<f64, EvalError> {
    Ok(match eval(expr, history, t)? {
        Value::Scalar(v) => v,
        _ => f64::NAN,
    })
}

fn vector(v: Value<'_>) -> Vec<Sample> {
    match v {
        Value::Vector(v) => v,
        _ => Vec::new(),
    }
}

fn matrix(v: Value<'_>) -> Matrix<'_> {
    match v {
        Value::Matrix(m) => m,
        _ => Vec::new(),
    }
}

fn call<'h>(c: &Call, history: &'h History, t: i64) -> Result<Value<'h>, EvalError> {
    let args = &c.args.args;
    let name = c.func.name;
    Ok(match name {
        "time" => Value::Scalar(t as f64 / 1000.0),
        "vector" => Value::Vector(vec![Sample {
            labels: Labels::empty(),
            value: scalar_arg(&args[0], history, t)?,
        }]),
        "rate" | "increase" | "delta" | "irate" => {
            let Expr::MatrixSelector(ms) = &*args[0] else {
                return Ok(Value::Vector(Vec::new()));
            };
            let end = t - offset_ms(&ms.vs);
            let range = ms.range.as_millis() as i64;
            let out = matrix(eval(&args[0], history, t)?)
                .into_iter()
                .filter_map(|(labels, points)| {
                    let value = match name {
                        "irate" => irate(&points)?,
                        _ => extrapolated_rate(
                            &points,
                            end - range,
                            end,
                            name != "delta",
                            name == "rate",
                        )?,
                    };
                    Some(Sample {
                        labels: drop_name(&labels),
                        value,
                    })
                })
                .collect();
            Value::Vector(out)
        }
        "quantile_over_time" => {
            let q = scalar_arg(&args[0], history, t)?;
            let out = matrix(eval(&args[1], history, t)?)
                .into_iter()
                .map(|(labels, points)| {
                    let mut values: Vec<f64> = points.iter().map(|p| p.1).collect();
                    Sample {
                        labels: drop_name(&labels),
                        value: quantile(q, &mut values),
                    }
                })
                .collect();
            Value::Vector(out)
        }
        "absent" | "absent_over_time" => {
            let present = match eval(&args[0], history, t)? {
                Value::Vector(v) => !v.is_empty(),
                Value::Matrix(m) => !m.is_empty(),
                Value::Scalar(_) => true,
            };
            if present {
                Value::Vector(Vec::new())
            } else {
                Value::Vector(vec![Sample {
                    labels: absent_labels(&args[0]),
                    value: 1.0,
                }])
            }
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let v = vector(eval(&args[0], history, t)?);
            let (lo, hi) = match name {
                "clamp" => (
                    scalar_arg(&args[1], history, t)?,
                    scalar_arg(&args[2], history, t)?,
                ),
                "clamp_min" => (scalar_arg(&args[1], history, t)?, f64::INFINITY),
                _ => (f64::NEG_INFINITY, scalar_arg(&args[1], history, t)?),
            };
            if name == "clamp" && hi < lo {
                return Ok(Value::Vector(Vec::new()));
            }
            Value::Vector(
                v.into_iter()
                    .map(|s| Sample {
                        labels: drop_name(&s.labels),
                        value: go_max(lo, go_min(hi, s.value)),
                    })
                    .collect(),
            )
        }
        "histogram_quantile" => {
            let q = scalar_arg(&args[0], history, t)?;
            let v = vector(eval(&args[1], history, t)?);
            histogram_quantile(q, v)?
        }
        over_time => {
            let m = matrix(eval(&args[0], history, t)?);
            let out = m
                .into_iter()
                .map(|(labels, points)| {
                    let values = points.iter().map(|p| p.1);
                    let n = points.len() as f64;
                    let value = match over_time {
                        "avg_over_time" => avg(values),
                        "min_over_time" => {
                            values.fold(f64::NAN, |a, v| if v < a || a.is_nan() { v } else { a })
                        }
                        "max_over_time" => {
                            values.fold(f64::NAN, |a, v| if v > a || a.is_nan() { v } else { a })
                        }
                        "sum_over_time" => values.sum(),
                        "count_over_time" => n,
                        "last_over_time" => points.last().map_or(f64::NAN, |p| p.1),
                        "present_over_time" => 1.0,
                        "stddev_over_time" => variance(values).sqrt(),
                        "resets" => points.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
                        "changes" => points
                            .windows(2)
                            .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
                            .count() as f64,
                        _ => variance(values),
                    };
                    Sample {
                        labels: if over_time == "last_over_time" {
                            labels
                        } else {
                            drop_name(&labels)
                        },
                        value,
                    }
                })
                .collect();
            Value::Vector(out)
        }
    })
}

/// Go's `math.Max`/`math.Min` (NaN wins).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Prometheus's running mean (it switches to it only on overflow; the plain mean is what
/// it computes for finite sums).
fn avg(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for v in values {
        sum += v;
        n += 1.0;
    }
    sum / n
}

/// Population variance, Prometheus's running formula.
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    aux / count
}

/// Prometheus's `quantile` (linear interpolation between the closest ranks).
fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Prometheus's `extrapolatedRate` for `rate`, `increase` (counters) and `delta` (gauges).
fn extrapolated_rate(
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut previous = 0.0;
        for &(_, v) in points {
            if v < previous {
                result += previous;
            }
            previous = v;
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average_step = sampled / (points.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average_step / 2.0
    };
    result *= interval / sampled;
    if per_second {
        result /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result)
}

fn irate(points: &[(i64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (previous, last) = (points[points.len() - 2], points[points.len() - 1]);
    let result = if last.1 < previous.1 {
        last.1
    } else {
        last.1 - previous.1
    };
    let interval = last.0 - previous.0;
    if interval == 0 {
        return None;
    }
    Some(result / (interval as f64 / 1000.0))
}

/// The labels `absent` gives: the selector's equality matchers (a label matched twice by
/// equality is left out).
fn absent_labels(arg: &Expr) -> Labels {
    let vs = match arg {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if let MatchOp::Equal = m.op {
            seen.entry(&m.name)
                .and_modify(|v| *v = None)
                .or_insert(Some(&m.value));
        }
    }
    make_labels(
        seen.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string()))),
    )
}

fn histogram_quantile(q: f64, v: Vec<Sample>) -> Result<Value<'static>, EvalError> {
    let mut groups: FastMap<Labels, Vec<(f64, f64)>> = FastMap::default();
    for s in v {
        let Ok(le) = parse_go_float(label(&s.labels, "le")) else {
            continue;
        };
        let key = drop_name(&set_label(&s.labels, "le", ""));
        groups.entry(key).or_default().push((le, s.value));
    }
    let out = groups
        .into_iter()
        .map(|(labels, mut buckets)| Sample {
            labels,
            value: bucket_quantile(q, &mut buckets),
        })
        .collect();
    Ok(Value::Vector(out))
}

/// A float as Prometheus writes `le` values (`+Inf`, `0.5`, `1e3`).
pub(crate) fn parse_go_float(s: &str) -> Result<f64, std::num::ParseFloatError> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        other => other.parse(),
    }
}

/// Prometheus's `bucketQuantile` over (upper bound, cumulative count).
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds, then force the counts to be monotonic.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(le, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += count,
            _ => merged.push((le, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1]
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(merged.len() - 1);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn aggregate<'h>(a: &AggregateExpr, history: &'h History, t: i64) -> Result<Value<'h>, EvalError> {
    let input = vector(eval(&a.expr, history, t)?);
    let (names, include): (&[String], bool) = match &a.modifier {
        Some(LabelModifier::Include(l)) => (&l.labels, true),
        Some(LabelModifier::Exclude(l)) => (&l.labels, false),
        None => (&[], true),
    };
    let op = a.op.id();
    if op == token::T_TOPK || op == token::T_BOTTOMK {
        let k = match &a.param {
            Some(p) => scalar_arg(p, history, t)?,
            None => 1.0,
        };
        if k < 1.0 || k.is_nan() {
            return Ok(Value::Vector(Vec::new()));
        }
        let k = k.min(input.len() as f64) as usize;
        let mut groups: FastMap<Labels, Vec<Sample>> = FastMap::default();
        for s in input {
            groups
                .entry(grouping(&s.labels, names, include))
                .or_default()
                .push(s);
        }
        let top = op == token::T_TOPK;
        let mut out = Vec::new();
        for (_, mut members) in groups {
            // NaN ranks last either way.
            members.sort_by(|x, y| {
                let (a, b) = (x.value, y.value);
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => b.total_cmp(&a),
                    _ => a.total_cmp(&b),
                }
            });
            members.truncate(k);
            out.extend(members);
        }
        return Ok(Value::Vector(out));
    }
    // (sum, count, min, max) per group.
    let mut groups: FastMap<Labels, (f64, f64, f64, f64)> = FastMap::default();
    for s in input {
        let g = groups
            .entry(grouping(&s.labels, names, include))
            .or_insert((0.0, 0.0, f64::NAN, f64::NAN));
        g.0 += s.value;
        g.1 += 1.0;
        if s.value < g.2 || g.2.is_nan() {
            g.2 = s.value;
        }
        if s.value > g.3 || g.3.is_nan() {
            g.3 = s.value;
        }
    }
    let out = groups
        .into_iter()
        .map(|(labels, (sum, count, min, max))| Sample {
            labels,
            value: match op {
                token::T_SUM => sum,
                token::T_AVG => sum / count,
                token::T_COUNT => count,
                token::T_MIN => min,
                _ => max,
            },
        })
        .collect();
    Ok(Value::Vector(out))
}

fn arith(op: u16, l: f64, r: f64) -> f64 {
    match op {
        token::T_ADD => l + r,
        token::T_SUB => l - r,
        token::T_MUL => l * r,
        token::T_DIV => l / r,
        token::T_MOD => l % r,
        token::T_POW => l.powf(r),
        _ => f64::NAN,
    }
}

fn compare(op: u16, l: f64, r: f64) -> bool {
    match op {
        token::T_EQLC => l == r,
        token::T_NEQ => l != r,
        token::T_GTR => l > r,
        token::T_LSS => l < r,
        token::T_GTE => l >= r,
        token::T_LTE => l <= r,
        _ => false,
    }
}

/// Prometheus's `vectorElemBinop`: the value, and whether to keep the element.
fn elem(op: TokenType, l: f64, r: f64) -> (f64, bool) {
    if op.is_comparison_operator() {
        (l, compare(op.id(), l, r))
    } else {
        (arith(op.id(), l, r), true)
    }
}

fn binary<'h>(b: &BinaryExpr, history: &'h History, t: i64) -> Result<Value<'h>, EvalError> {
    let lhs = eval(&b.lhs, history, t)?;
    let rhs = eval(&b.rhs, history, t)?;
    let return_bool = b.return_bool();
    let op = b.op;
    let comparison = op.is_comparison_operator();
    Ok(match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            if comparison {
                Value::Scalar(f64::from(u8::from(compare(op.id(), l, r))))
            } else {
                Value::Scalar(arith(op.id(), l, r))
            }
        }
        (Value::Vector(v), Value::Scalar(s)) => {
            Value::Vector(vector_scalar(op, v, s, false, return_bool))
        }
        (Value::Scalar(s), Value::Vector(v)) => {
            Value::Vector(vector_scalar(op, v, s, true, return_bool))
        }
        (Value::Vector(l), Value::Vector(r)) => Value::Vector(vector_vector(b, l, r)?),
        _ => Value::Vector(Vec::new()),
    })
}

fn vector_scalar(op: TokenType, v: Vec<Sample>, s: f64, swap: bool, bool_: bool) -> Vec<Sample> {
    let comparison = op.is_comparison_operator();
    v.into_iter()
        .filter_map(|mut sample| {
            let (l, r) = if swap {
                (s, sample.value)
            } else {
                (sample.value, s)
            };
            let (mut value, mut keep) = elem(op, l, r);
            if comparison && swap {
                value = r;
            }
            if bool_ {
                value = f64::from(u8::from(keep));
                keep = true;
            }
            keep.then(|| {
                if !comparison || bool_ {
                    sample.labels = drop_name(&sample.labels);
                }
                sample.value = value;
                sample
            })
        })
        .collect()
}

fn vector_vector(
    b: &BinaryExpr,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
) -> Result<Vec<Sample>, EvalError> {
    let modifier = b.modifier.as_ref();
    let (names, on): (&[String], bool) = match modifier.and_then(|m| m.matching.as_ref()) {
        Some(LabelModifier::Include(l)) => (&l.labels, true),
        Some(LabelModifier::Exclude(l)) => (&l.labels, false),
        None => (&[], false),
    };
    let signature = |labels: &Labels| grouping(labels, names, on);
    let op = b.op;
    if op.is_set_operator() {
        let right: FastSet<Labels> = rhs.iter().map(|s| signature(&s.labels)).collect();
        return Ok(match op.id() {
            token::T_LAND => lhs
                .into_iter()
                .filter(|s| right.contains(&signature(&s.labels)))
                .collect(),
            token::T_LUNLESS => lhs
                .into_iter()
                .filter(|s| !right.contains(&signature(&s.labels)))
                .collect(),
            _ => {
                let left: FastSet<Labels> = lhs.iter().map(|s| signature(&s.labels)).collect();
                let mut out = lhs;
                out.extend(
                    rhs.into_iter()
                        .filter(|s| !left.contains(&signature(&s.labels))),
                );
                out
            }
        });
    }
    let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
    let include: &[String] = card.labels().map_or(&[], |l| &l.labels);
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_side: FastMap<Labels, Sample> =
        FastMap::with_capacity_and_hasher(one.len(), Default::default());
    for s in one {
        let sig = signature(&s.labels);
        if one_side.contains_key(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(EvalError::DuplicateMatch(labels_text(&sig), side));
        }
        one_side.insert(sig, s);
    }
    let return_bool = b.return_bool();
    let comparison = op.is_comparison_operator();
    let mut inserted: FastMap<Labels, Labels> = FastMap::default();
    let mut out = Vec::new();
    for s in many {
        let sig = signature(&s.labels);
        let Some(r) = one_side.get(&sig) else {
            continue;
        };
        let (fl, fr) = if one_to_many {
            (r.value, s.value)
        } else {
            (s.value, r.value)
        };
        let (mut value, keep) = elem(op, fl, fr);
        if return_bool {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        // Prometheus's resultMetric.
        let mut labels = if !comparison {
            drop_name(&s.labels)
        } else {
            s.labels.clone()
        };
        if one_to_one && (on || !names.is_empty()) {
            labels = if on {
                grouping(&labels, names, true)
            } else {
                labels
                    .iter()
                    .filter(|(k, _)| !names.iter().any(|n| n == &**k))
                    .cloned()
                    .collect()
            };
        }
        for name in include {
            labels = set_label(&labels, name, label(&r.labels, name));
        }
        if return_bool {
            labels = drop_name(&labels);
        }
        if one_to_one {
            if inserted.insert(sig.clone(), labels.clone()).is_some() {
                return Err(EvalError::ManyToMany);
            }
        } else if inserted.insert(labels.clone(), sig).is_some() {
            return Err(EvalError::DuplicateOutput(labels_text(&labels)));
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(series: &[(&str, &[(i64, f64)])]) -> History {
        let mut h = History::keeping(3_600_000);
        for (key, points) in series {
            for &(t, v) in *points {
                h.push_key(key, t, v);
            }
        }
        h
    }

    fn run(h: &History, q: &str, t: i64) -> Vec<(String, f64)> {
        let expr = promql_parser::parser::parse(q).unwrap();
        check(&expr).unwrap();
        let mut out: Vec<(String, f64)> = match eval(&expr, h, t).unwrap() {
            Value::Vector(v) => v
                .into_iter()
                .map(|s| (labels_text(&s.labels), s.value))
                .collect(),
            Value::Scalar(s) => vec![(String::new(), s)],
            Value::Matrix(_) => panic!("matrix"),
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // A counter rising 10 per 15 s: rate over 1 m is 10/15 per second.
        let points: Vec<(i64, f64)> = (0..=8).map(|i| (i * 15_000, i as f64 * 10.0)).collect();
        let h = history(&[("c_total{a=\"1\"}", &points)]);
        let got = run(&h, "rate(c_total[1m])", 120_000);
        assert_eq!(got.len(), 1);
        assert!((got[0].1 - 10.0 / 15.0).abs() < 1e-9, "{got:?}");
        assert_eq!(got[0].0, "{a=\"1\"}");
        // A reset adds the value before it: (10 - 5) + 2 + (4 - 2).
        let h = history(&[(
            "c_total",
            &[(0, 5.0), (15_000, 10.0), (30_000, 2.0), (45_000, 4.0)],
        )]);
        let got = run(&h, "increase(c_total[45s])", 45_000);
        assert!((got[0].1 - 9.0).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn refuses_what_it_does_not_implement_by_name() {
        for (q, what) in [
            ("predict_linear(x[5m], 60)", "the function `predict_linear`"),
            ("max_over_time(x[5m:1m])", "a subquery"),
            ("x @ 100", "the `@` modifier"),
            ("quantile(0.9, x)", "the aggregation `quantile`"),
            (
                "label_replace(x, \"a\", \"b\", \"c\", \"d\")",
                "the function `label_replace`",
            ),
        ] {
            let expr = promql_parser::parser::parse(q).unwrap();
            assert_eq!(check(&expr).unwrap_err().0, what, "{q}");
        }
    }

    #[test]
    fn group_left_copies_labels_from_the_one_side() {
        let h = history(&[
            ("used{id=\"a\",host=\"h\"}", &[(0, 5.0)]),
            ("used{id=\"b\",host=\"h\"}", &[(0, 9.0)]),
            ("limit{host=\"h\",zone=\"z\"}", &[(0, 10.0)]),
        ]);
        let got = run(&h, "used / on(host) group_left(zone) limit > 0.8", 0);
        assert_eq!(
            got,
            vec![("{host=\"h\", id=\"b\", zone=\"z\"}".into(), 0.9)]
        );
        let err = eval(
            &promql_parser::parser::parse("limit + on(host) used").unwrap(),
            &h,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, EvalError::DuplicateMatch(..)), "{err}");
    }

    #[test]
    fn stale_series_vanish_and_absent_notices() {
        let mut h = history(&[("up{job=\"a\"}", &[(0, 1.0)])]);
        assert_eq!(run(&h, "absent(up{job=\"a\"})", 10_000), vec![]);
        h.mark_stale_key("up{job=\"a\"}", 15_000);
        assert_eq!(
            run(&h, "absent(up{job=\"a\"})", 20_000),
            vec![("{job=\"a\"}".into(), 1.0)]
        );
        assert_eq!(run(&h, "absent_over_time(up[1m])", 20_000), vec![]);
    }

    #[test]
    fn histogram_quantile_interpolates_within_a_bucket() {
        let h = history(&[
            ("d_bucket{le=\"0.1\"}", &[(0, 50.0)]),
            ("d_bucket{le=\"1\"}", &[(0, 90.0)]),
            ("d_bucket{le=\"+Inf\"}", &[(0, 100.0)]),
        ]);
        let got = run(&h, "histogram_quantile(0.75, d_bucket)", 0);
        assert!(
            (got[0].1 - (0.1 + 0.9 * 25.0 / 40.0)).abs() < 1e-12,
            "{got:?}"
        );
        assert_eq!(run(&h, "histogram_quantile(0.99, d_bucket)", 0)[0].1, 1.0);
    }

    #[test]
    fn aggregations_group_by_and_without() {
        let h = history(&[
            ("m{a=\"1\",b=\"x\"}", &[(0, 1.0)]),
            ("m{a=\"1\",b=\"y\"}", &[(0, 3.0)]),
            ("m{a=\"2\",b=\"x\"}", &[(0, 7.0)]),
        ]);
        assert_eq!(
            run(&h, "sum by (a) (m)", 0),
            vec![("{a=\"1\"}".into(), 4.0), ("{a=\"2\"}".into(), 7.0)]
        );
        assert_eq!(
            run(&h, "avg without (a) (m)", 0),
            vec![("{b=\"x\"}".into(), 4.0), ("{b=\"y\"}".into(), 3.0)]
        );
        assert_eq!(
            run(&h, "topk(1, m)", 0),
            vec![("{__name__=\"m\", a=\"2\", b=\"x\"}".into(), 7.0)]
        );
        assert_eq!(run(&h, "count(m) > bool 2", 0), vec![("{}".into(), 1.0)]);
    }
}
