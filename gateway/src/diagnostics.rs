//! Where compiling a route reports what Ocelot would silently ignore (an
//! invalid IP range, a claims instruction it cannot parse, a header
//! transform it would skip): one sink per route, producing `Diagnostic`s
//! that name the route, for the load report and `--check`.

use ocelot_compat::Diagnostic;

/// The warnings of one route (or one other place in the configuration).
pub(crate) struct Warnings<'a> {
    location: String,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a> Warnings<'a> {
    pub(crate) fn new(location: String, out: &'a mut Vec<Diagnostic>) -> Warnings<'a> {
        Warnings { location, out }
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Diagnostic::warning(
            self.location.clone(),
            field.into(),
            message.into(),
        ));
    }
}

/// Runs `compile` with a sink of its own and returns what it reported.
#[cfg(test)]
pub(crate) fn collecting<T>(compile: impl FnOnce(&mut Warnings<'_>) -> T) -> (T, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let value = compile(&mut Warnings::new("test".into(), &mut out));
    (value, out)
}
