/*
 * The "Thống kê truy cập" box: online now, today, total visits of one site.
 *
 *   <script async src="https://STATS-HOST/widget.js" data-site="demo"></script>
 *
 * Renders into every <div data-analytics-counter> on the page or, when there is none, where
 * each script tag stands (a tag in <head> with no such div only records the page view).
 * Settings come only from the data-* attributes listed in the README; a box's own attributes
 * win over the script tag's. One file, no dependencies, no eval: the service minifies it.
 */
(function () {
  "use strict";
  var doc = document;
  var DOC = Document.prototype;
  // A named element (<img name="hidden">, <form name="currentScript">) shadows document's
  // own properties and methods of that name, and a portal may let anyone post HTML: read
  // and call them through the prototype.
  function docGet(name, of) {
    for (var proto = DOC; proto; proto = Object.getPrototypeOf(proto)) {
      var own = Object.getOwnPropertyDescriptor(proto, name);
      if (own) return own.get ? own.get.call(of || doc) : undefined;
    }
  }
  // On window too, a named element (id="addEventListener") shadows the prototype's method.
  function on(target, type, listener, options) {
    EventTarget.prototype.addEventListener.call(target, type, listener, options);
  }
  var script = docGet("currentScript");
  if (!(script instanceof HTMLScriptElement) || !window.fetch) return;
  // A frame the page wrote (srcdoc, about:blank) is part of the page around it: its view
  // is that page's (its address and referrer, not the frame's base URL and the page
  // itself), recorded once with the page's own copies of this script.
  var home = window;
  try {
    while (home.location.protocol === "about:" && home.parent !== home) home = home.parent;
    home.location.href; // another origin's window throws
  } catch (e) {
    home = window;
  }

  // Endpoints are relative to the script's own URL, so a service mounted under a path works.
  var BASE = script.src.replace(/[^/]*$/, "");
  var LABELS = {
    vi: ["Thống kê truy cập", "Đang online", "Hôm nay", "Đã truy cập"],
    en: ["Visitor statistics", "Online now", "Today", "Total visits"]
  };
  var LABEL_ATTRS = ["title", "labelOnline", "labelToday", "labelTotal"];
  var TIMEOUT_MS = 8000;
  var RETRY_FIRST_MS = 5000;
  var RETRY_MAX_MS = 600000;
  // A view the service could not take is sent again after 1 s, then 5 s (its Retry-After).
  var RESEND_MS = [1000, 5000];
  // The page view may land after the first read: read once more soon.
  var SETTLE_MS = 2000;
  var DASH = "\u2013";
  // Inherited properties cross a shadow root: the host starts from initial values (a
  // sidebar's uppercase, letter spacing or indent stays out) except for the page's font and
  // whether it is visible; rules the page gives the box's own element still win.
  var CSS =
    ":host{all:initial;display:block;font-family:inherit;font-size:inherit;visibility:inherit}" +
    ".b{box-sizing:border-box;overflow:hidden;line-height:1.5;" +
    "font-family:var(--atc-font,inherit);font-size:var(--atc-font-size,inherit);" +
    "color:var(--atc-color,#222);background:var(--atc-bg,#fff);" +
    "border:var(--atc-border,1px solid #c5d2e3);border-radius:var(--atc-radius,4px)}" +
    ".t{margin:0;padding:var(--atc-padding,.45em .8em);font-weight:700;" +
    "background:var(--atc-title-bg,#1c5a9e);color:var(--atc-title-color,#fff)}" +
    "dl{margin:0;padding:var(--atc-padding,.45em .8em)}" +
    "dl div{display:flex;justify-content:space-between;gap:.5em;padding:.1em 0}" +
    "dt::after{content:':'}" +
    "dd{margin:0;font-weight:700;font-variant-numeric:tabular-nums;" +
    "color:var(--atc-number-color,inherit)}";
  // Shared by every box and every copy of this script on the page, from whichever service
  // (a portal moving to another service, or showing another's numbers, has two): what is
  // in it is kept per service. Under a symbol: an element's id is a global name too (named
  // access on window), and a portal that lets people post HTML can hold any id.
  var STATE = Symbol.for("analyticsCounter");
  var state = (home[STATE] = home[STATE] || { tracked: Object.create(null) });
  state.warnedBy = state.warnedBy || Object.create(null);
  // This script's file, as the service serves it: /widget.js, or a pinned /widget.v<hash>.js.
  var WIDGET_FILE = /\/widget(\.v[0-9a-f]+)?\.js([?#]|$)/;
  var BOX = "[data-analytics-counter]";
  // The boxes this copy of the script keeps reading; a box taken off the page leaves the
  // list at its next read, and comes back when it is put back.
  var polls = [];
  // The sites whose page view this copy records: a page shown again from the back/forward
  // cache records them again, each to the service of the copy that sent it first.
  var mine = [];
  var sheet;

  function noop() {}

  function setting(box, name) {
    var own = box.dataset[name];
    return own != null ? own : script.dataset[name];
  }

  function hitId() {
    var bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    var id = "";
    for (var i = 0; i < bytes.length; i++) id += (bytes[i] + 256).toString(16).slice(1);
    return id;
  }

  // A refused page view (wrong origin, unknown site...) leaves the numbers still: tell the
  // site owner why, once per page, with the API's reason code and what fixes it.
  function warnRefused(site, response) {
    if (state.warnedBy[BASE]) return;
    state.warnedBy[BASE] = 1;
    response
      .json()
      .then(function (body) {
        var error = body.error;
        // The origin of the page the view was sent for: in a frame the page wrote
        // (srcdoc), location.origin is "null".
        var page = new URL(pageUrl());
        var origin = page.origin;
        var fix =
          /^(origin|url)_not_allowed$/.test(error.code)
            ? /^https?:$/.test(page.protocol)
              ? "add " + origin + " to the site's origins (analytics-service site update " + site + " --origin " + origin + ", with its other origins)"
              : "open the page from its web address (http:// or https://): a page opened from a file is never counted"
            : error.code === "unknown_site"
            ? "check data-site=\"" + site + "\": " + BASE + " has no such site"
            : "";
        console.warn(
          "Visitor counter: page view not counted (" + error.code + "): " + error.message + (fix ? ". Fix: " + fix : "")
        );
      })
      .catch(noop);
  }

  // The service keeps a page's path and a referrer's host only. Sending no more keeps a
  // long query string (search terms, tracking tags) from making the view too big to take.
  // A frame written by a page this script cannot reach is at "about:": its page is the one
  // whose address it inherits as its base.
  function pageUrl() {
    var page = home.location.protocol === "about:" ? new URL(docGet("baseURI")) : home.location;
    return page.origin + page.pathname;
  }

  function referrerOrigin() {
    var referrer = docGet("referrer", home.document);
    try {
      return referrer ? new URL(referrer).origin : null;
    } catch (e) {
      return null;
    }
  }

  // Records the page view of `site` once per page; true for every box of a site the page
  // records, so each of them reads again shortly after (SETTLE_MS) and shows the view.
  function track(site) {
    if (!site || script.dataset.track === "false") return false;
    // Own properties only: a site may be called "constructor". Two services may each have
    // a site of that name on the page: each counts its own.
    var key = BASE + " " + site;
    if (Object.prototype.hasOwnProperty.call(state.tracked, key)) return true;
    state.tracked[key] = 1;
    mine.push(site);
    // A page the browser prerenders (speculation rules) may never be seen: its view counts
    // when the reader is shown it.
    if (docGet("prerendering")) {
      on(doc, "prerenderingchange", function () { send(site); }, { once: true });
    } else {
      send(site);
    }
    return true;
  }

  function send(site) {
    try {
      post(site, JSON.stringify({ site: site, url: pageUrl(), referrer: referrerOrigin(), id: hitId() }), 0);
    } catch (e) {
      // Recording a view must never break the host page.
    }
  }

  // A string body goes as text/plain: no CORS preflight. keepalive: the view is sent even
  // if the reader leaves at once. A view the service could not take (unreachable, a worker
  // restarting behind the proxy: 502, Redis away for long: 503) is sent again after each of
  // RESEND_MS, with the same body: its id makes a view sent twice count once.
  function post(site, body, attempt) {
    try {
      fetch(BASE + "api/v1/hit", { method: "POST", body: body, keepalive: true, credentials: "omit" })
        .then(function (response) {
          if (response.status >= 502 && response.status <= 504) resend(site, body, attempt);
          else if (!response.ok) warnRefused(site, response);
        })
        .catch(function () {
          resend(site, body, attempt);
        });
    } catch (e) {
      // as in send
    }
  }

  function resend(site, body, attempt) {
    if (attempt < RESEND_MS.length) {
      setTimeout(function () {
        post(site, body, attempt + 1);
      }, RESEND_MS[attempt]);
    }
  }

  function element(tag, cls, part) {
    var el = DOC.createElement.call(doc, tag);
    if (cls) el.className = cls;
    if (part) el.setAttribute("part", part);
    return el;
  }

  function styleRoot(root) {
    // A constructable stylesheet passes a Content-Security-Policy without 'unsafe-inline'.
    if (root.adoptedStyleSheets && CSSStyleSheet.prototype.replaceSync) {
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
      }
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(element("style")).textContent = CSS;
    }
  }

  function numberFormat(lang) {
    try {
      return new Intl.NumberFormat(lang);
    } catch (e) {
      return new Intl.NumberFormat("vi");
    }
  }

  function pageLang(host) {
    var marked = host.closest("[lang]");
    return marked ? marked.lang : "";
  }

  function render(host) {
    var lang = (setting(host, "lang") || "vi").toLowerCase();
    var defaults = (Object.prototype.hasOwnProperty.call(LABELS, lang) && LABELS[lang]) || LABELS.vi;
    var root = host.attachShadow({ mode: "open" });
    styleRoot(root);
    var box = root.appendChild(element("section", "b", "box"));
    var owned = LABEL_ATTRS.map(function (name) {
      var own = setting(host, name);
      return own != null && own !== "";
    });
    var labels = LABEL_ATTRS.map(function (name, i) {
      return owned[i] ? setting(host, name) : defaults[i];
    });
    // Every label says which language it is in, so that a screen reader reads it with the
    // right voice: ours are Vietnamese or English; the owner's are in the language of
    // data-lang or, without it, of the page around the box ("" where that is unknown).
    var ownLang = setting(host, "lang") || pageLang(host);
    var ourLang = defaults === LABELS.en ? "en" : "vi";
    box.lang = owned.indexOf(false) < 0 ? ownLang : ourLang;
    function label(el, i) {
      el.textContent = labels[i];
      if (owned[i] && box.lang !== ownLang) el.lang = ownLang;
      return el;
    }
    // A heading to screen readers (they list and jump by headings), without an h2's own
    // sizes and margins changing how the box looks.
    var title = label(box.appendChild(element("div", "t", "title")), 0);
    title.setAttribute("role", "heading");
    title.setAttribute("aria-level", "2");
    // Named by its heading: the name is read in the heading's language.
    box.setAttribute("aria-labelledby", "t");
    title.id = "t";
    var list = box.appendChild(element("dl"));
    var values = labels.slice(1).map(function (_, i) {
      var row = list.appendChild(element("div", "", "row"));
      label(row.appendChild(element("dt", "", "label")), i + 1);
      var value = row.appendChild(element("dd", "", "value"));
      value.textContent = DASH;
      return value;
    });
    return { values: values, format: numberFormat(lang) };
  }

  function show(view, counter) {
    var numbers = [counter.online, counter.today.visits, counter.total.visits];
    numbers.forEach(function (n) {
      if (typeof n !== "number" || !isFinite(n)) throw new TypeError("bad counter");
    });
    numbers.forEach(function (n, i) {
      view.values[i].textContent = view.format.format(n);
    });
  }

  function poll(host, view, site, refreshMs, tracked) {
    var url = BASE + "api/v1/sites/" + encodeURIComponent(site) + "/counter";
    var settle = tracked;
    var failures = 0;
    var paused = false;
    var stopped = false;
    // A read in flight: a wake-up then only asks for the next read at once, so that one
    // box never runs two chains of reads.
    var busy = false;
    var due = false;
    var timer;
    var poller = { resume: resume, tracked: tracked };

    function retryDelay() {
      var delay = Math.min(RETRY_FIRST_MS * Math.pow(2, failures - 1), RETRY_MAX_MS);
      // Jitter spreads the readers' retries when a stopped service comes back.
      return delay * (0.8 + 0.4 * Math.random());
    }

    function tick() {
      if (!host.isConnected) {
        stopped = true;
        polls.splice(polls.indexOf(poller), 1);
        return;
      }
      if (docGet("hidden")) {
        paused = true;
        return;
      }
      busy = true;
      var abort = window.AbortController ? new AbortController() : null;
      var deadline = setTimeout(function () {
        if (abort) abort.abort();
      }, TIMEOUT_MS);
      // "no-cache": the browser revalidates with the ETag it holds (If-None-Match, 304)
      // without this script adding a header, which would cost a CORS preflight.
      fetch(url, { cache: "no-cache", credentials: "omit", signal: abort && abort.signal })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (counter) {
          show(view, counter);
          failures = 0;
        })
        .catch(function () {
          // The box keeps its last numbers (or the dash); the next try backs off.
          failures++;
        })
        .then(function () {
          clearTimeout(deadline);
          busy = false;
          if (due) {
            due = false;
            tick();
            return;
          }
          var delay = failures ? retryDelay() : settle ? SETTLE_MS : refreshMs;
          settle = false;
          timer = setTimeout(tick, delay);
        });
    }

    // Reads again at once if the box had stopped (taken off the page, tab hidden) or when
    // `now`; `settleAfter`: the page's view was just sent, so read once more soon after.
    function resume(now, settleAfter) {
      if (settleAfter) settle = true;
      if (stopped) {
        stopped = false;
        polls.push(poller);
        now = true;
      }
      if (!now && !paused) return;
      paused = false;
      if (busy) {
        due = true;
        return;
      }
      clearTimeout(timer);
      tick();
    }

    polls.push(poller);
    tick();
    return poller;
  }

  function mount(host) {
    if (host.__analyticsCounter) return;
    host.__analyticsCounter = true;
    var site = setting(host, "site");
    if (!site) return;
    // Before the box: a box that cannot be drawn still names a site whose page this is.
    var tracked = track(site);
    try {
      var view = render(host);
    } catch (e) {
      // An element that cannot host a shadow root: leave it as the page made it.
      return;
    }
    // 10 s to a day: a delay past 2^31 ms would make setTimeout fire at once, in a loop.
    // A value that is no number gives the default.
    var asked = Number(setting(host, "refresh") || 30);
    var refresh = asked < 10 ? 10 : Math.min(86400, asked) || 30;
    host.__analyticsCounter = poll(host, view, site, refresh * 1000, tracked);
  }

  // Whether this copy reads a box of the page's own: not when the box names a site that
  // another copy's tag names and this one's does not (that copy's service has the site).
  // A box of a site no tag names is read by the service of the copy that finds it first.
  function ours(box) {
    var site = box.dataset.site;
    if (!site || site === script.dataset.site) return true;
    return ![].some.call(DOC.querySelectorAll.call(doc, "script[data-site]"), function (tag) {
      return tag !== script && tag.dataset.site === site && WIDGET_FILE.test(tag.src);
    });
  }

  // A box that appears after the page loaded (a sidebar rendered by the page's own script,
  // a box put back after being taken off) is drawn or read again. Every node added may be a
  // hostile form whose fields shadow Element's methods: called through the prototype.
  function found(node) {
    if (!(node instanceof Element)) return;
    var boxes = [].slice.call(Element.prototype.querySelectorAll.call(node, BOX));
    if (Element.prototype.matches.call(node, BOX)) boxes.unshift(node);
    boxes.forEach(function (host) {
      var poller = host.__analyticsCounter;
      if (!poller) {
        if (ours(host)) mount(host);
      }
      else if (poller.resume) poller.resume(false, false);
    });
  }

  function watch() {
    if (window.MutationObserver) {
      new MutationObserver(function (records) {
        records.forEach(function (record) {
          [].forEach.call(record.addedNodes, found);
        });
      }).observe(doc, { childList: true, subtree: true });
    }
    on(doc, "visibilitychange", function () {
      if (docGet("hidden")) return;
      polls.slice().forEach(function (poller) {
        poller.resume(false, false);
      });
    });
    // A page the back/forward cache shows again was not loaded again: it is a page view all
    // the same (the reader sees the page anew, as where the browser has no such cache), and
    // its numbers are as old as the time it spent there.
    on(window, "pageshow", function (event) {
      if (!event.persisted) return;
      mine.forEach(send);
      polls.slice().forEach(function (poller) {
        poller.resume(true, poller.tracked);
      });
    });
  }

  function start() {
    // The page's own boxes; a box a copy of this script placed by its tag is not one, so a
    // second tag elsewhere on the page gets a box of its own too.
    var boxes = [].filter.call(
      DOC.querySelectorAll.call(doc, BOX),
      function (box) { return !box.__analyticsPlaced && ours(box); }
    );
    var parent = script.parentNode;
    if (!boxes.length && parent && parent !== docGet("head")) {
      var here = element("div");
      here.setAttribute("data-analytics-counter", "");
      here.__analyticsPlaced = true;
      parent.insertBefore(here, script.nextSibling);
      boxes = [here];
    }
    for (var i = 0; i < boxes.length; i++) mount(boxes[i]);
    track(script.dataset.site);
    watch();
  }

  if (docGet("readyState") === "loading") on(doc, "DOMContentLoaded", start);
  else start();
})();
