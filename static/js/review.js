/* Triplet review page (templates/curation/review.html, webapp/curation/views.py).
 *
 * One triplet at a time: anchor, positive and negative side by side. One key per decision - A approve, R reject,
 * S swap positive and negative, U undo the last decision, N or ArrowRight skip, C crop/photo of the anchor,
 * ? help - and the next triplet shows at once: batches are fetched ahead (GET review/triplets/?after=) and their
 * pictures preloaded, and each decision is POSTed in the background, one after another in the order made (so an
 * undo always follows the decision it undoes). A decision the server refuses is reported and its triplet goes
 * back in the queue. The counters show the decisions of this sitting and their rate per minute.
 */
(function () {
  "use strict";

  var root = document.getElementById("review");
  if (!root) return;

  var card = document.getElementById("review-card");
  var meta = document.getElementById("review-meta");
  var pictures = {
    anchor: document.getElementById("ref-anchor"),
    positive: document.getElementById("ref-positive"),
    negative: document.getElementById("ref-negative"),
  };
  var anchorContext = document.getElementById("ref-anchor-context");
  var names = {
    anchor: document.getElementById("ref-anchor-name"),
    positive: document.getElementById("ref-positive-name"),
    negative: document.getElementById("ref-negative-name"),
  };
  var historyList = document.getElementById("review-history");
  var historyCount = document.getElementById("review-history-count");
  var countOut = document.getElementById("review-count");
  var rateOut = document.getElementById("review-rate");
  var remainingOut = document.getElementById("review-remaining");
  var message = document.getElementById("review-message");
  var empty = document.getElementById("review-empty");
  var log = document.getElementById("review-log");
  var help = document.getElementById("review-help");

  var batchUrl = root.dataset.batchUrl;
  var batchSize = parseInt(root.dataset.batchSize, 10) || 30;
  var REFILL_BELOW = 10;

  var queue = [];
  var current = null;
  var after = 0;
  var serverRemaining = parseInt(remainingOut.textContent, 10) || 0;
  var exhausted = false;
  var fetching = null;
  var preloaded = {};
  var done = []; // this sitting's decisions, newest last, for undo
  var chain = Promise.resolve();
  var inflight = 0;
  var saved = 0;
  var failed = 0;
  var count = 0;
  var firstAt = null;
  var showCrop = true;
  var messageTimer = null;

  function decideUrl(id) {
    return root.dataset.decideUrl.replace(/\/0\/decision\/$/, "/" + id + "/decision/");
  }

  function undoUrl(id) {
    return root.dataset.undoUrl.replace(/\/0\/undo\/$/, "/" + id + "/undo/");
  }

  function csrfToken() {
    var field = root.querySelector('input[name="csrfmiddlewaretoken"]');
    if (field) return field.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function say(text, kind) {
    clearTimeout(messageTimer);
    message.textContent = text;
    message.className = "alert" + (kind === "error" ? " alert-error" : " alert-warning");
    message.dataset.kind = kind || "info";
    message.hidden = false;
    if (kind !== "error") {
      messageTimer = setTimeout(function () { message.hidden = true; }, 6000);
    }
  }

  function readJson(response) {
    return response.json().catch(function () { return {}; }).then(function (data) {
      if (!response.ok) {
        throw new Error(data.detail || "the server answered " + response.status);
      }
      return data;
    });
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken()},
      body: JSON.stringify(body || {}),
    }).then(readJson);
  }

  // Decisions reach the server one at a time, in the order they were made.
  function enqueue(work) {
    inflight += 1;
    root.dataset.inflight = String(inflight);
    var result = chain.then(work);
    chain = result.catch(function () {}).then(function () {
      inflight -= 1;
      root.dataset.inflight = String(inflight);
    });
    return result;
  }

  function pictureUrls(triplet) {
    return [triplet.anchor.url, triplet.anchor.context_url, triplet.positive.url, triplet.negative.url];
  }

  function preload(triplet) {
    pictureUrls(triplet).forEach(function (url) {
      if (url && !preloaded[url]) {
        var image = new Image();
        image.decoding = "async";
        image.src = url;
        preloaded[url] = image;
      }
    });
  }

  function fetchMore() {
    if (fetching) return fetching;
    if (exhausted) return Promise.resolve();
    var url = batchUrl + (batchUrl.indexOf("?") < 0 ? "?" : "&") + "after=" + after + "&limit=" + batchSize;
    fetching = fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(readJson)
      .then(function (data) {
        data.triplets.forEach(function (triplet) {
          queue.push(triplet);
          preload(triplet);
        });
        after = data.after;
        serverRemaining = data.remaining;
        if (!data.triplets.length || !data.remaining) exhausted = true;
      })
      .catch(function (error) {
        say("Could not load more triplets: " + error.message, "error");
      })
      .then(function () {
        fetching = null;
        updateStats();
      });
    return fetching;
  }

  function text(parent, tag, content, className) {
    var node = document.createElement(tag);
    node.textContent = content;
    if (className) node.className = className;
    parent.appendChild(node);
    return node;
  }

  function formatTime(iso) {
    var date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  function renderHistory(triplet) {
    historyList.textContent = "";
    (triplet.history || []).forEach(function (decision) {
      text(historyList, "li", decision.label + " by " + (decision.reviewer || "a deleted user") + ", " +
        formatTime(decision.at));
    });
    historyCount.textContent = String((triplet.history || []).length);
  }

  function renderMeta(triplet) {
    meta.textContent = "";
    var id = text(meta, "strong", "#" + triplet.id);
    id.title = "Triplet " + triplet.id;
    var parts = [triplet.kind_label, triplet.category || "no category", triplet.source, triplet.status];
    var scores = triplet.scores || {};
    if (typeof scores.positive_score === "number" && typeof scores.negative_score === "number") {
      parts.push("scores " + scores.positive_score.toFixed(2) + " / " + scores.negative_score.toFixed(2));
    }
    if (triplet.reviewed_by) parts.push("last decided by " + triplet.reviewed_by);
    meta.appendChild(document.createTextNode(" · " + parts.join(" · ")));
  }

  function setPictures(triplet) {
    var anchorUrl = showCrop || !triplet.anchor.context_url ? triplet.anchor.url : triplet.anchor.context_url;
    pictures.anchor.src = anchorUrl;
    pictures.positive.src = triplet.positive.url;
    pictures.negative.src = triplet.negative.url;
    if (triplet.anchor.context_url && showCrop) {
      anchorContext.src = triplet.anchor.context_url;
      anchorContext.hidden = false;
    } else {
      anchorContext.hidden = true;
      anchorContext.removeAttribute("src");
    }
    ["anchor", "positive", "negative"].forEach(function (role) {
      names[role].textContent = triplet[role].ref;
      pictures[role].alt = role.charAt(0).toUpperCase() + role.slice(1) + ": " + triplet[role].ref;
    });
    card.dataset.ready = "false";
    var images = [pictures.anchor, pictures.positive, pictures.negative];
    Promise.all(images.map(function (image) { return image.decode().catch(function () {}); })).then(function () {
      if (current === triplet) card.dataset.ready = "true";
    });
  }

  function show(triplet) {
    current = triplet;
    empty.hidden = true;
    card.hidden = false;
    card.dataset.tripletId = String(triplet.id);
    card.dataset.status = triplet.status;
    card.classList.toggle("is-swapped", !!triplet.swappedHere);
    setPictures(triplet);
    renderMeta(triplet);
    renderHistory(triplet);
    updateStats();
  }

  function showEmpty() {
    current = null;
    card.hidden = true;
    card.dataset.tripletId = "";
    empty.hidden = false;
    updateStats();
  }

  function advance() {
    if (queue.length) {
      show(queue.shift());
    } else if (!exhausted) {
      current = null;
      card.dataset.tripletId = "";
      card.dataset.ready = "false";
      fetchMore().then(function () {
        if (current) return;
        if (queue.length) show(queue.shift());
        else if (exhausted) showEmpty();
      });
    } else {
      showEmpty();
    }
    if (queue.length < REFILL_BELOW) fetchMore();
  }

  function updateStats() {
    countOut.textContent = String(count);
    root.dataset.count = String(count);
    root.dataset.saved = String(saved);
    root.dataset.failed = String(failed);
    var left = serverRemaining + queue.length + (current ? 1 : 0);
    remainingOut.textContent = String(left);
    if (firstAt !== null && count > 0) {
      var minutes = Math.max((Date.now() - firstAt) / 60000, 1 / 60);
      rateOut.textContent = String(Math.round(count / minutes));
    } else {
      rateOut.textContent = "–";
    }
  }

  function logLine(triplet, label) {
    var item = document.createElement("li");
    item.textContent = "#" + triplet.id + " " + label + "…";
    log.insertBefore(item, log.firstChild);
    while (log.children.length > 200) log.removeChild(log.lastChild);
    return item;
  }

  function counted() {
    if (firstAt === null) firstAt = Date.now();
    count += 1;
    updateStats();
  }

  function refresh(triplet, fresh) {
    triplet.status = fresh.status;
    triplet.history = fresh.history;
    triplet.scores = fresh.scores;
    triplet.reviewed_by = fresh.reviewed_by;
    if (current === triplet) {
      card.dataset.status = triplet.status;
      renderMeta(triplet);
      renderHistory(triplet);
    }
  }

  function swapLocally(triplet) {
    var positive = triplet.positive;
    triplet.positive = triplet.negative;
    triplet.negative = positive;
    triplet.swappedHere = !triplet.swappedHere;
  }

  function record(triplet, action, label) {
    var line = logLine(triplet, label);
    var entry = {triplet: triplet, action: action, decision: null};
    entry.request = enqueue(function () {
      return post(decideUrl(triplet.id), {action: action}).then(function (data) {
        entry.decision = data.decision;
        saved += 1;
        line.textContent = "#" + triplet.id + " " + label + " by " + data.decision.reviewer + ", " +
          formatTime(data.decision.at);
        refresh(triplet, data.triplet);
        updateStats();
        return data;
      }, function (error) {
        failed += 1;
        line.textContent = "#" + triplet.id + " " + label + ": not saved (" + error.message + ")";
        line.className = "is-failed";
        say("Triplet #" + triplet.id + " was not " + label + ": " + error.message, "error");
        var index = done.indexOf(entry);
        if (index >= 0) done.splice(index, 1);
        count = Math.max(0, count - 1);
        if (action === "swap") {
          swapLocally(triplet);
          if (current === triplet) show(triplet);
        } else if (current !== triplet && queue.indexOf(triplet) < 0) {
          queue.unshift(triplet);
          preload(triplet);
        }
        updateStats();
        throw error;
      });
    });
    entry.request.catch(function () {});
    done.push(entry);
    counted();
    return entry;
  }

  var LABELS = {approve: "approved", reject: "rejected", swap: "swapped"};

  function decide(action) {
    if (!current) return;
    var triplet = current;
    if (action === "swap") {
      swapLocally(triplet);
      show(triplet);
      record(triplet, action, LABELS[action]);
      return;
    }
    record(triplet, action, LABELS[action]);
    advance();
  }

  function undo() {
    var entry = done.pop();
    if (!entry) {
      say("Nothing to undo in this sitting.");
      return;
    }
    var triplet = entry.triplet;
    count = Math.max(0, count - 1);
    if (entry.action === "swap") {
      swapLocally(triplet);
    } else if (current && current !== triplet) {
      queue.unshift(current);
    }
    show(triplet);
    var line = logLine(triplet, "undone");
    enqueue(function () {
      return entry.request.then(function () {
        return post(undoUrl(entry.decision.id), {}).then(function (data) {
          line.textContent = "#" + triplet.id + " " + LABELS[entry.action] + " undone by " + data.decision.reviewer;
          refresh(triplet, data.triplet);
        });
      }, function () {
        line.textContent = "#" + triplet.id + ": nothing stored to undo";
      });
    }).catch(function (error) {
      line.className = "is-failed";
      say("Could not undo on triplet #" + triplet.id + ": " + error.message, "error");
    });
    updateStats();
  }

  function skip() {
    if (!current) return;
    logLine(current, "skipped").textContent = "#" + current.id + " skipped (still pending)";
    advance();
  }

  function toggleHelp() {
    if (help.open) help.close();
    else if (help.showModal) help.showModal();
    else help.setAttribute("open", "");
  }

  function run(action) {
    if (action === "help") return toggleHelp();
    if (action === "undo") return undo();
    if (action === "skip") return skip();
    if (action === "crop") {
      showCrop = !showCrop;
      if (current) setPictures(current);
      return;
    }
    decide(action);
  }

  var KEYS = {a: "approve", r: "reject", s: "swap", u: "undo", n: "skip", ArrowRight: "skip", "?": "help", c: "crop"};

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    var tag = (event.target && event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") return;
    var action = KEYS[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (!action) return;
    if (help.open && action !== "help") return;
    event.preventDefault();
    run(action);
  });

  root.querySelectorAll(".review-actions [data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      run(button.dataset.action);
      button.blur(); // the keys stay the way to work
    });
  });

  window.addEventListener("beforeunload", function (event) {
    if (inflight > 0) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  setInterval(updateStats, 1000);
  root.dataset.inflight = "0";
  fetchMore().then(advance);
})();
