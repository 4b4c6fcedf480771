//! The console's HTML: escaping, the page frame, tables, forms and charts. Every value from the
//! database goes through [`esc`] (or [`attr`]) on its way into a page.

use std::fmt::Write;

/// `text`, escaped for an HTML text node.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text`, escaped for a double-quoted attribute value.
pub(super) fn attr(text: &str) -> String {
    esc(text)
}

/// `text`, percent-encoded for a URL's path segment or query value (a space is `%20`, which a
/// path and a query both read back as a space).
pub(super) fn url(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, URL_SAFE).to_string()
}

/// What [`url`] leaves as it is: letters, digits, `-`, `_` and `~` (a `.` is encoded, so that no
/// id reads as a `..` segment).
const URL_SAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// The sections of the console, in the navigation's order: (path, title).
const SECTIONS: [(&str, &str); 8] = [
    ("/ui/workflows", "Workflows"),
    ("/ui/queues", "Queues"),
    ("/ui/jobs", "Jobs"),
    ("/ui/dead-letters", "Dead letters"),
    ("/ui/schedules", "Schedules"),
    ("/ui/outbox", "Outbox"),
    ("/ui/sagas", "Stuck sagas"),
    ("/ui/workers", "Workers"),
];

/// A whole page: the frame, the navigation (with `current` marked), `title` and `body`. With a
/// `csrf` value (a signed-in page), the frame has the sign-out button.
pub(super) fn page(title: &str, current: &str, csrf: Option<&str>, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in SECTIONS {
        let here = if path == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{path}\"{here}>{name}</a>");
    }
    let signout = match csrf {
        Some(csrf) => format!(
            "<form method=\"post\" action=\"/ui/logout\" class=\"signout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            attr(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Quark</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/style.css\">\
         <script src=\"/ui/assets/live.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/ui/workflows\">Quark</a><nav>{nav}</nav>{signout}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    )
}

/// A table of `rows` (already rendered cells) under `header`; `live` marks it for the page's
/// live refresh, and `empty` is shown instead when there are no rows.
pub(super) fn table(id: &str, header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut out = format!("<div class=\"live\" data-live=\"{id}\" id=\"{id}\">");
    if rows.is_empty() {
        let _ = write!(out, "<p class=\"empty\">{}</p></div>", esc(empty));
        return out;
    }
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A status badge.
pub(super) fn badge(status: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        attr(&status.to_ascii_lowercase()),
        esc(status)
    )
}

/// A time, as RFC 3339 to the second (UTC), or a dash.
pub(super) fn time(t: Option<&prost_types::Timestamp>) -> String {
    match t {
        Some(t) => {
            let micros = t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000;
            let full = quark_history::Timestamp::from_micros(micros).to_string();
            let shown = full.get(..19).unwrap_or(&full).replace('T', " ");
            format!("<time datetime=\"{}\">{shown}</time>", attr(&full))
        }
        None => "–".into(),
    }
}

/// A byte count, in the unit that reads best.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A payload's value, as compact JSON (escaped), or a note for binary ones.
pub(super) fn payload(p: Option<&super::super::proto::Payload>) -> String {
    match p {
        None => "–".into(),
        Some(p) if p.codec.is_empty() || p.codec == "json" => {
            esc(&String::from_utf8_lossy(&p.data))
        }
        Some(p) => format!("&lt;{} bytes of {}&gt;", p.data.len(), esc(&p.codec)),
    }
}

/// A form that posts to `action`, with the CSRF value, `fields` (rendered) and a submit button;
/// `confirm` asks the user before it is sent.
pub(super) fn form(
    action: &str,
    csrf: &str,
    fields: &str,
    button: &str,
    confirm: Option<&str>,
) -> String {
    let confirm = match confirm {
        Some(question) => format!(" data-confirm=\"{}\"", attr(question)),
        None => String::new(),
    };
    format!(
        "<form method=\"post\" action=\"{}\"{confirm}>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}\
         <button type=\"submit\">{}</button></form>",
        attr(action),
        attr(csrf),
        esc(button)
    )
}

/// A labelled text input.
pub(super) fn input(name: &str, label: &str, value: &str, placeholder: &str) -> String {
    format!(
        "<label>{} <input name=\"{}\" value=\"{}\" placeholder=\"{}\"></label>",
        esc(label),
        attr(name),
        attr(value),
        attr(placeholder)
    )
}

/// A message box: `kind` is `ok` or `error`.
pub(super) fn notice(kind: &str, text: &str) -> String {
    format!(
        "<p class=\"notice {}\" role=\"status\">{}</p>",
        attr(kind),
        esc(text)
    )
}

/// One series of a line chart: its name and its points (x, y).
pub(super) struct Series<'a> {
    pub(super) name: &'a str,
    pub(super) points: Vec<(f64, f64)>,
}

/// A line chart of `series` over a shared x axis (`x_label` names it, `x_ticks` labels its
/// ends), as inline SVG; each series gets its own y scale, labelled by its maximum.
pub(super) fn line_chart(
    title: &str,
    series: &[Series<'_>],
    x_ticks: (&str, &str),
    y_unit: &[&str],
) -> String {
    const W: f64 = 640.0;
    const H: f64 = 180.0;
    const PAD: f64 = 36.0;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let mut out = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/>",
        esc(title),
        attr(title),
        H - PAD,
        W - PAD,
        H - PAD
    );
    for (i, s) in series.iter().enumerate() {
        let max = s.points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
        let scale = if max > 0.0 { max } else { 1.0 };
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| {
                let px = PAD + (x - x0) / span * (W - 2.0 * PAD);
                let py = H - PAD - y / scale * (H - 2.0 * PAD);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let unit = y_unit.get(i).copied().unwrap_or("");
        let _ = write!(
            out,
            "<polyline class=\"series s{i}\" fill=\"none\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"legend s{i}\">{} (max {:.1}{})</text>",
            points.join(" "),
            PAD + 4.0 + 220.0 * i as f64,
            14.0,
            esc(s.name),
            max,
            esc(unit)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{PAD}\" y=\"{}\" class=\"tick\">{}</text>\
         <text x=\"{}\" y=\"{}\" class=\"tick end\">{}</text></svg></figure>",
        H - PAD + 16.0,
        esc(x_ticks.0),
        W - PAD,
        H - PAD + 16.0,
        esc(x_ticks.1)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(url("order-7_x~"), "order-7_x~");
        assert_eq!(url(".."), "%2E%2E");
    }

    #[test]
    fn byte_counts_read_in_their_unit() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
