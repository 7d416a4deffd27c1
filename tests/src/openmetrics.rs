//! A strict parser of the OpenMetrics text format (the subset a server without exemplars
//! or timestamps writes), so that the tests read `/metrics` as a scraper would and fail on
//! anything a scraper would refuse, rather than picking lines out with string searches.
//!
//! It checks: every family is announced by `# TYPE` (and `# HELP`) once, before its samples;
//! each sample's name is its family's name with the suffix its type allows; labels are
//! well-formed and not repeated; counters are not negative; a histogram's buckets per label
//! set rise in `le` to `+Inf`, are cumulative, and `+Inf` equals `_count`; no sample appears
//! twice; the text ends with `# EOF`.

use std::collections::{BTreeMap, BTreeSet};

/// The type a `# TYPE` line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its type, help and samples, in the order they came.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition, by family name.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Every sample called `name` (a sample name, such as `x_total` or `x_bucket`).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|family| &family.samples)
            .filter(move |sample| sample.name == name)
    }

    /// The sum of the samples called `name` whose labels include every pair of `labels`.
    /// `None` when there is no such sample.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matched = self
            .samples(name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
            })
            .peekable();
        matched.peek()?;
        Some(matched.map(|sample| sample.value).sum())
    }

    /// Whether some family has a sample called `name`.
    pub fn has_sample(&self, name: &str) -> bool {
        self.samples(name).next().is_some()
    }
}

/// Parses `text`; the error names the line and what is wrong with it.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the text does not end with \"# EOF\\n\"")?;
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    for (number, line) in body.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').ok_or_else(|| fail("bad comment"))?;
            let (name, detail) = rest.split_once(' ').unwrap_or((rest, ""));
            check_name(name).map_err(|why| fail(&why))?;
            match keyword {
                "HELP" => {
                    if helps.insert(name.to_owned(), detail.to_owned()).is_some() {
                        return Err(fail("a second HELP"));
                    }
                }
                "TYPE" => {
                    let kind = match detail {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "info" => Kind::Info,
                        _ => return Err(fail("a type this parser does not know")),
                    };
                    let help = helps.get(name).cloned().unwrap_or_default();
                    let family = Family {
                        kind,
                        help,
                        samples: Vec::new(),
                    };
                    if families.insert(name.to_owned(), family).is_some() {
                        return Err(fail("a second TYPE for one family"));
                    }
                    current = Some(name.to_owned());
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{detail}")) {
                        return Err(fail("a unit the name does not end with"));
                    }
                }
                _ => return Err(fail("an unknown comment")),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|why| fail(&why))?;
        let family_name = current
            .as_deref()
            .ok_or_else(|| fail("a sample before any TYPE"))?;
        let family = families.get_mut(family_name).expect("current is a family");
        let suffix = sample
            .name
            .strip_prefix(family_name)
            .ok_or_else(|| fail("a sample outside its family"))?;
        let allowed: &[&str] = match family.kind {
            Kind::Counter => &["_total"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["_bucket", "_count", "_sum"],
            Kind::Info => &["_info"],
        };
        if !allowed.contains(&suffix) {
            return Err(fail("a suffix the family's type does not allow"));
        }
        if family.kind == Kind::Counter && sample.value < 0.0 {
            return Err(fail("a negative counter"));
        }
        if family.kind == Kind::Info && sample.value != 1.0 {
            return Err(fail("an info sample that is not 1"));
        }
        if (suffix == "_bucket") != sample.labels.contains_key("le") {
            return Err(fail("le belongs on buckets and only there"));
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(fail("a sample seen before"));
        }
        family.samples.push(sample);
    }
    if let Some(name) = helps.keys().find(|name| !families.contains_key(*name)) {
        return Err(format!("HELP for {name}, which has no TYPE"));
    }
    for (name, family) in &families {
        if family.kind == Kind::Histogram {
            check_histogram(name, family)?;
        }
    }
    Ok(Exposition { families })
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut text) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = text.strip_prefix('}') {
                text = after;
                break;
            }
            let (key, after) = text.split_once("=\"").ok_or("a label without =\"")?;
            check_name(key)?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (index, '"') => break index,
                    (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("an unknown escape \\{other}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("the label {key} twice"));
            }
            text = &after[end + 1..];
            if let Some(after) = text.strip_prefix(',') {
                text = after;
            } else if !text.starts_with('}') {
                return Err("labels not separated by commas".into());
            }
        }
        rest = text;
    }
    let value_text = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value_text.contains(' ') {
        return Err("a timestamp or exemplar, which this server never writes".into());
    }
    let value = parse_value(value_text)?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse()
            .map_err(|_| format!("{text:?} is not a number")),
    }
}

/// Buckets per label set: `le` rising to `+Inf`, counts cumulative, `+Inf` = `_count`, and
/// a `_sum`.
fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut sums = BTreeSet::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        match sample.name.strip_prefix(name) {
            Some("_bucket") => {
                let le = parse_value(&labels.remove("le").expect("checked"))?;
                buckets.entry(labels).or_default().push((le, sample.value));
            }
            Some("_count") => {
                counts.insert(labels, sample.value);
            }
            _ => {
                sums.insert(labels);
            }
        }
    }
    for (labels, series) in &buckets {
        let rising = series
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1);
        let last = series.last().expect("at least one bucket");
        if !rising || last.0 != f64::INFINITY {
            return Err(format!(
                "{name} {labels:?}: buckets not cumulative up to +Inf"
            ));
        }
        if counts.get(labels) != Some(&last.1) || !sums.contains(labels) {
            return Err(format!(
                "{name} {labels:?}: _count is not the +Inf bucket, or no _sum"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_refuses_what_a_scraper_would() {
        let text = "# HELP a Things.\n# TYPE a counter\na_total{shard=\"0\"} 3\n\
                    # TYPE g gauge\ng 1.5\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                    # TYPE h histogram\nh_sum{s=\"x\"} 0.5\nh_count{s=\"x\"} 2\n\
                    h_bucket{le=\"0.1\",s=\"x\"} 1\nh_bucket{le=\"+Inf\",s=\"x\"} 2\n# EOF\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.sum("a_total", &[("shard", "0")]), Some(3.0));
        assert_eq!(parsed.sum("g", &[]), Some(1.5));
        assert_eq!(parsed.sum("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(parsed.families["a"].help, "Things.");

        let refused = [
            "# TYPE a counter\na_total 1\n",
            "# HELP a_total Things.\n# TYPE a counter\na_total 1\n# EOF\n",
            "a 1\n# EOF\n",
            "# TYPE a counter\na 1\n# EOF\n",
            "# TYPE a counter\na_total -1\n# EOF\n",
            "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n",
            "# TYPE a gauge\na 1\na 2\n# EOF\n",
            "# TYPE h histogram\nh_count 2\nh_sum 1\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
            "# TYPE h histogram\nh_count 2\nh_sum 1\nh_bucket{le=\"1\"} 2\n# EOF\n",
        ];
        for text in refused {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
