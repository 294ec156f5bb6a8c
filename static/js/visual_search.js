/* Visual search page.
 *
 * 1. The drop zone: dropping a file fills the real file input and shows a preview.
 * 2. With fetch available, choosing a photo searches at once through POST /api/search/ (no page reload): the
 *    photo is shown with every detected item boxed and labelled, the most confident item is searched; clicking
 *    (or tapping, or Enter/Space on) another box searches that item; a box can be dragged or resized (pointer:
 *    mouse, pen, touch; keyboard: arrows move, Shift+arrows resize, Enter searches, Esc puts it back); "Search
 *    the whole photo" is always there. The category / max price / stock filters apply to every search.
 * 3. Each result has a "Not similar" button and its link records a click (static/js/feedback.js does both,
 *    with the list's feedback token; the list keeps the photo, which a mark sends again).
 * Progressive enhancement only: without JavaScript the visible file input and the form POST to /search/ work
 * as is. Box coordinates are pixels of the upright (EXIF-applied) photo, like the API's; the browser draws
 * the photo upright too (image-orientation: from-image, its default), and boxes are placed in percentages of
 * the photo, so they follow the photo when the page is resized.
 */
(function () {
  "use strict";

  var zone = document.querySelector("[data-dropzone]");
  if (!zone) return;
  var input = zone.querySelector('input[type="file"]');
  var preview = document.getElementById("upload-preview");
  var fileName = zone.querySelector("[data-file-name]");
  var form = zone.closest("form");
  var objectUrl = null;
  if (!input) return;

  zone.classList.add("is-enhanced");

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function showFile(file) {
    if (objectUrl) {
      URL.revokeObjectURL(objectUrl);
      objectUrl = null;
    }
    if (!file) {
      if (preview) preview.hidden = true;
      if (fileName) fileName.textContent = "";
      zone.classList.remove("has-file");
      return;
    }
    zone.classList.add("has-file");
    zone.classList.remove("has-error");
    if (fileName) fileName.textContent = file.name + " · " + formatSize(file.size);
    if (preview && window.URL && URL.createObjectURL && /^image\//.test(file.type)) {
      objectUrl = URL.createObjectURL(file);
      preview.src = objectUrl;
      preview.hidden = false;
    } else if (preview) {
      preview.hidden = true;
    }
  }

  if (preview) {
    // A format the browser cannot draw (TIFF, or a file that is not an image at all): no preview.
    preview.addEventListener("error", function () { preview.hidden = true; });
  }

  function setDragging(on) {
    zone.classList.toggle("is-dragover", on);
  }

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      setDragging(true);
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      if (event.type === "dragleave" && zone.contains(event.relatedTarget)) return;
      setDragging(false);
    });
  });

  // A file dropped just outside the zone must not make the browser navigate away to it.
  ["dragover", "drop"].forEach(function (type) {
    window.addEventListener(type, function (event) {
      if (!zone.contains(event.target)) event.preventDefault();
    });
  });

  // Clicking anywhere in the zone (outside the input itself) opens the file picker.
  zone.addEventListener("click", function (event) {
    if (event.target === input || event.target.closest("label, a, button")) return;
    input.click();
  });

  var live = setUpLiveSearch();

  input.addEventListener("change", function () {
    var file = input.files && input.files[0];
    showFile(file);
    if (live && file) live.newPhoto(file);
  });

  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    setDragging(false);
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    try {
      // Keep exactly one file, whatever was dropped.
      var transfer = new DataTransfer();
      transfer.items.add(files[0]);
      input.files = transfer.files;
    } catch (err) {
      input.files = files;
    }
    showFile(files[0]);
    if (live) live.newPhoto(files[0]);
  });

  if (form && !live) {
    // No fetch: the classic form POST, with a busy button.
    form.addEventListener("submit", function () {
      var button = form.querySelector('button[type="submit"]');
      form.classList.add("is-busy");
      if (button) {
        // Disable after this tick so the submission itself is not affected.
        window.setTimeout(function () {
          button.disabled = true;
          button.textContent = "Searching…";
        }, 0);
      }
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  function setUpLiveSearch() {
    var section = document.getElementById("photo-stage");
    var photo = document.getElementById("stage-photo");
    var layer = document.getElementById("box-layer");
    var statusLine = document.getElementById("search-status");
    var message = document.getElementById("search-message");
    var wholeButton = document.getElementById("search-whole");
    var addButton = document.getElementById("add-box");
    var resultsArea = document.getElementById("results-area");
    var apiUrl = form && form.getAttribute("data-api-url");
    if (!(window.fetch && window.FormData && apiUrl && section && photo && layer && resultsArea)) return null;
    form.classList.add("is-enhanced");

    var K = 24;
    var MIN_SIDE = 8; // image px
    var FIELD_NAMES = {image: "Photo", category: "Category", max_price: "Max price", in_stock: "In stock only",
                       box: "Box", whole_photo: "Whole photo", k: "Number of results"};

    var state = {
      file: null,
      size: null, // {width, height} of the upright photo, from the API (or the browser until then)
      items: [], // {index, label, score, box: [x1, y1, x2, y2], detected: [...] | null, el}
      haveBoxes: false,
      selection: null, // null: the API's default (best box) | {kind: "whole"} | {kind: "box", item}
      seq: 0,
      controller: null,
      retry: null
    };
    var drag = null;
    var ignoreClickUntil = 0;

    // -- small DOM helpers ---------------------------------------------------------------------------------
    function el(tag, attrs, children) {
      var node = document.createElement(tag);
      Object.keys(attrs || {}).forEach(function (name) {
        if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, attrs[name]);
      });
      (children || []).forEach(function (child) {
        if (child === null || child === undefined) return;
        node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
      });
      return node;
    }

    function percent(score) {
      return Math.round(score * 100) + "%";
    }

    function itemName(item) {
      if (item.index === null) return "your box";
      return item.label + " (" + percent(item.score) + ")" + (item.edited ? ", adjusted" : "");
    }

    function csrfToken() {
      var field = form.querySelector('input[name="csrfmiddlewaretoken"]');
      if (field && field.value) return field.value;
      var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
      return match ? decodeURIComponent(match[1]) : "";
    }

    function setStatus(text, busy) {
      statusLine.textContent = text;
      statusLine.classList.toggle("is-busy", !!busy);
    }

    function clearMessage() {
      message.hidden = true;
      message.textContent = "";
      message.className = "alert";
      form.querySelectorAll(".field.has-error").forEach(function (field) { field.classList.remove("has-error"); });
      form.querySelectorAll(".field-error.from-api").forEach(function (node) { node.remove(); });
      var serverError = document.getElementById("search-error");
      if (serverError) serverError.remove();
    }

    function showMessage(kind, lines, retry) {
      message.className = "alert " + (kind === "busy" ? "alert-warning" : "alert-error");
      message.setAttribute("data-kind", kind);
      message.textContent = "";
      lines.forEach(function (line) { message.appendChild(el("p", {}, [line])); });
      if (retry) {
        var again = el("button", {type: "button", "class": "button button-small", id: "search-retry"}, ["Try again"]);
        again.addEventListener("click", retry);
        message.appendChild(again);
      }
      message.hidden = false;
    }

    // -- boxes ---------------------------------------------------------------------------------------------
    function place(item) {
      var w = state.size.width, h = state.size.height, b = item.box;
      item.el.setAttribute("data-box", b.join(","));
      item.el.style.left = (100 * b[0] / w) + "%";
      item.el.style.top = (100 * b[1] / h) + "%";
      item.el.style.width = (100 * (b[2] - b[0]) / w) + "%";
      item.el.style.height = (100 * (b[3] - b[1]) / h) + "%";
    }

    function describe(item) {
      var text = item.index === null ? "Your box" : item.label + ", " + percent(item.score);
      if (item.edited) text += ", adjusted";
      item.el.setAttribute("aria-label", text);
      item.el.querySelector(".box-label").textContent =
        item.index === null ? "Your box" : item.label + " " + percent(item.score);
    }

    function labelText(label) {
      label = String(label || "Item");
      return label.charAt(0).toUpperCase() + label.slice(1);
    }

    function addItem(item) {
      var button = el("button", {type: "button", "class": "box", "aria-pressed": "false"}, [
        el("span", {"class": "box-label", "aria-hidden": "true"}),
        el("span", {"class": "box-handle", "data-corner": "nw", "aria-hidden": "true"}),
        el("span", {"class": "box-handle", "data-corner": "ne", "aria-hidden": "true"}),
        el("span", {"class": "box-handle", "data-corner": "sw", "aria-hidden": "true"}),
        el("span", {"class": "box-handle", "data-corner": "se", "aria-hidden": "true"})
      ]);
      if (item.index !== null) button.setAttribute("data-index", item.index);
      else button.classList.add("is-custom");
      item.el = button;
      button._item = item;
      state.items.push(item);
      layer.appendChild(button);
      place(item);
      describe(item);
      return item;
    }

    function renderBoxes(boxes) {
      layer.textContent = "";
      state.items = [];
      (boxes || []).forEach(function (raw) {
        addItem({index: raw.index, label: labelText(raw.label), score: raw.score, box: raw.box.slice(),
                 detected: raw.box.slice(), edited: false});
      });
      section.classList.toggle("has-boxes", state.items.length > 0);
    }

    function markSelection() {
      var selection = state.selection;
      state.items.forEach(function (item) {
        var on = !!(selection && selection.kind === "box" && selection.item === item);
        item.el.classList.toggle("is-selected", on);
        item.el.setAttribute("aria-pressed", on ? "true" : "false");
      });
      var whole = !!(selection && selection.kind === "whole");
      section.classList.toggle("is-whole", whole);
      wholeButton.setAttribute("aria-pressed", whole ? "true" : "false");
    }

    function clamp(value, low, high) {
      return Math.max(low, Math.min(high, value));
    }

    function moved(start, dx, dy) {
      var w = state.size.width, h = state.size.height;
      dx = clamp(dx, -start[0], w - start[2]);
      dy = clamp(dy, -start[1], h - start[3]);
      return [start[0] + dx, start[1] + dy, start[2] + dx, start[3] + dy];
    }

    function resized(start, corner, dx, dy) {
      var w = state.size.width, h = state.size.height, b = start.slice();
      if (corner.indexOf("w") >= 0) b[0] = clamp(start[0] + dx, 0, start[2] - MIN_SIDE);
      if (corner.indexOf("e") >= 0) b[2] = clamp(start[2] + dx, start[0] + MIN_SIDE, w);
      if (corner.indexOf("n") >= 0) b[1] = clamp(start[1] + dy, 0, start[3] - MIN_SIDE);
      if (corner.indexOf("s") >= 0) b[3] = clamp(start[3] + dy, start[1] + MIN_SIDE, h);
      return b;
    }

    function setBox(item, box) {
      item.box = box.map(Math.round);
      var edited = item.detected === null || item.box.join() !== item.detected.join();
      if (edited !== !!item.edited) {
        item.edited = edited;
        item.el.classList.toggle("is-edited", edited);
        describe(item);
      }
      place(item);
    }

    // Image pixels per CSS pixel of the displayed photo.
    function imageScale() {
      var rect = layer.getBoundingClientRect();
      return {x: state.size.width / Math.max(rect.width, 1), y: state.size.height / Math.max(rect.height, 1),
              rect: rect};
    }

    // Pointer: tap/click a box to search it; drag a box to move it, a corner to resize it; drag on the photo
    // (mouse or pen: a touch there scrolls the page) to draw a new box. Every finished drag searches at once.
    layer.addEventListener("pointerdown", function (event) {
      if (!state.size || drag || (event.pointerType === "mouse" && event.button !== 0)) return;
      var boxEl = event.target.closest(".box");
      var handle = event.target.closest(".box-handle");
      var scale = imageScale();
      if (boxEl) {
        drag = {item: boxEl._item, mode: handle ? handle.getAttribute("data-corner") : "move",
                start: boxEl._item.box.slice(), node: boxEl};
      } else {
        if (event.pointerType === "touch") return;
        event.preventDefault(); // no text selection or image drag while drawing
        var x = (event.clientX - scale.rect.left) * scale.x, y = (event.clientY - scale.rect.top) * scale.y;
        drag = {item: null, mode: "draw", origin: [x, y], node: layer};
      }
      drag.id = event.pointerId;
      drag.x = event.clientX;
      drag.y = event.clientY;
      drag.scale = scale;
      drag.moved = false;
      drag.node.setPointerCapture(event.pointerId);
    });

    layer.addEventListener("pointermove", function (event) {
      if (!drag || event.pointerId !== drag.id) return;
      var cssDx = event.clientX - drag.x, cssDy = event.clientY - drag.y;
      if (!drag.moved && Math.abs(cssDx) + Math.abs(cssDy) < 5) return;
      drag.moved = true;
      var dx = cssDx * drag.scale.x, dy = cssDy * drag.scale.y;
      if (drag.mode === "draw") {
        var o = drag.origin, w = state.size.width, h = state.size.height;
        var box = [clamp(Math.min(o[0], o[0] + dx), 0, w), clamp(Math.min(o[1], o[1] + dy), 0, h),
                   clamp(Math.max(o[0], o[0] + dx), 0, w), clamp(Math.max(o[1], o[1] + dy), 0, h)];
        if (!drag.item) {
          drag.item = addItem({index: null, label: null, score: null, box: box, detected: null, edited: true});
          drag.item.el.classList.add("is-edited", "is-drawing");
        }
        drag.item.box = box.map(Math.round);
        place(drag.item);
      } else if (drag.mode === "move") {
        setBox(drag.item, moved(drag.start, dx, dy));
      } else {
        setBox(drag.item, resized(drag.start, drag.mode, dx, dy));
      }
    });

    function endDrag(event, cancelled) {
      if (!drag || event.pointerId !== drag.id) return;
      var finished = drag;
      drag = null;
      if (!finished.moved) return; // a plain click: the click event searches the box
      ignoreClickUntil = Date.now() + 500; // the click that ends a drag is not a second search
      var item = finished.item;
      if (finished.mode === "draw") {
        item.el.classList.remove("is-drawing");
        var b = item.box;
        if (cancelled || b[2] - b[0] < MIN_SIDE || b[3] - b[1] < MIN_SIDE) {
          removeItem(item);
          return;
        }
        item.el.focus();
      } else if (cancelled) {
        setBox(item, finished.start);
        return;
      }
      search({kind: "box", item: item});
    }
    layer.addEventListener("pointerup", function (event) { endDrag(event, false); });
    layer.addEventListener("pointercancel", function (event) { endDrag(event, true); });

    function removeItem(item) {
      item.el.remove();
      state.items = state.items.filter(function (other) { return other !== item; });
    }

    layer.addEventListener("click", function (event) {
      var boxEl = event.target.closest(".box");
      if (!boxEl || Date.now() < ignoreClickUntil) return;
      search({kind: "box", item: boxEl._item});
    });

    // Keyboard on a focused box: arrows move it a few screen pixels, Shift+arrows resize it (right/down grow,
    // left/up shrink), Esc puts it back where the detector found it; Enter/Space (the button's click) search it.
    layer.addEventListener("keydown", function (event) {
      var boxEl = event.target.closest(".box");
      if (!boxEl || !state.size || event.altKey || event.ctrlKey || event.metaKey) return;
      var item = boxEl._item;
      var scale = imageScale();
      var sx = Math.max(1, Math.round(4 * scale.x)), sy = Math.max(1, Math.round(4 * scale.y));
      var dx = 0, dy = 0;
      switch (event.key) {
        case "ArrowLeft": dx = -sx; break;
        case "ArrowRight": dx = sx; break;
        case "ArrowUp": dy = -sy; break;
        case "ArrowDown": dy = sy; break;
        case "Escape":
          if (item.detected && item.edited) {
            event.preventDefault();
            setBox(item, item.detected);
            setStatus(item.label + " box put back.");
          }
          return;
        default: return;
      }
      event.preventDefault();
      setBox(item, event.shiftKey ? resized(item.box, "se", dx, dy) : moved(item.box, dx, dy));
      setStatus((event.shiftKey ? "Box resized" : "Box moved") + ". Press Enter to search this area.");
    });

    wholeButton.addEventListener("click", function () {
      if (state.file) search({kind: "whole"});
    });

    addButton.addEventListener("click", function () {
      if (!state.size) return;
      var w = state.size.width, h = state.size.height;
      var item = addItem({index: null, label: null, score: null, detected: null, edited: true,
                          box: [Math.round(w / 4), Math.round(h / 4), Math.round(3 * w / 4), Math.round(3 * h / 4)]});
      item.el.classList.add("is-edited");
      item.el.focus();
      setStatus("New box added. Drag it or use the arrow keys to place it, then click it or press Enter.");
    });

    // -- searching -----------------------------------------------------------------------------------------
    function newPhoto(file) {
      state.file = file;
      state.size = null;
      state.haveBoxes = false;
      state.selection = null;
      layer.textContent = "";
      state.items = [];
      section.classList.remove("has-boxes", "is-whole", "no-preview");
      section.hidden = false;
      if (objectUrl) {
        photo.style.width = "";
        photo.src = objectUrl;
      } else {
        photo.removeAttribute("src");
        section.classList.add("no-preview");
      }
      search(null);
    }

    // Small photos are enlarged (boxes on a 320 px photo are hard to hit with a finger), large ones fit the
    // window's height; max-width: 100% keeps them inside narrow screens. The boxes follow in percentages.
    function fitPhoto() {
      var w = photo.naturalWidth, h = photo.naturalHeight;
      if (!w || !h) return;
      var scale = Math.max(1, 480 / Math.max(w, h));
      scale = Math.min(scale, Math.max(200, 0.7 * window.innerHeight) / h);
      photo.style.width = Math.round(w * scale) + "px";
    }
    photo.addEventListener("load", fitPhoto);
    window.addEventListener("resize", fitPhoto);

    photo.addEventListener("error", function () {
      if (photo.getAttribute("src")) section.classList.add("no-preview");
    });

    function filterFields(data) {
      var category = form.elements.namedItem("category");
      var maxPrice = form.elements.namedItem("max_price");
      var inStock = form.elements.namedItem("in_stock");
      if (category && category.value) data.append("category", category.value);
      if (maxPrice && maxPrice.value.trim()) data.append("max_price", maxPrice.value.trim());
      if (inStock && inStock.checked) data.append("in_stock", "true"); // unchecked: any stock, not "false"
    }

    function search(selection) {
      if (!state.file) return;
      if (state.controller) state.controller.abort();
      var seq = ++state.seq;
      var controller = window.AbortController ? new AbortController() : null;
      state.controller = controller;

      var data = new FormData();
      data.append("image", state.file, state.file.name || "photo");
      data.append("k", String(K));
      filterFields(data);
      var what;
      if (selection && selection.kind === "whole") {
        data.append("whole_photo", "true");
        what = "the whole photo";
      } else if (selection && selection.kind === "box") {
        data.append("box", selection.item.box.map(Math.round).join(","));
        what = itemName(selection.item);
      } else {
        what = "the most confident item";
      }

      clearMessage();
      state.retry = function () { search(selection); };
      section.classList.add("is-busy");
      form.classList.add("is-busy");
      // The results on screen are now the previous ones: dimmed, and no longer the page's #results.
      var old = document.getElementById("results-section");
      if (old) {
        old.classList.add("is-stale");
        old.setAttribute("aria-busy", "true");
        old.removeAttribute("id");
        var list = old.querySelector("#results");
        if (list) list.removeAttribute("id");
      }
      setStatus(state.haveBoxes || selection ? "Searching for " + what + "…" : "Finding the items in your photo…",
                true);

      function done() {
        if (seq !== state.seq) return false;
        section.classList.remove("is-busy");
        form.classList.remove("is-busy");
        state.controller = null;
        return true;
      }

      fetch(apiUrl, {
        method: "POST",
        body: data,
        credentials: "same-origin",
        headers: {"X-CSRFToken": csrfToken(), "Accept": "application/json"},
        signal: controller ? controller.signal : undefined
      }).then(function (response) {
        return response.json().then(
          function (body) { return {status: response.status, body: body}; },
          function () { return {status: response.status, body: null}; }
        );
      }).then(function (reply) {
        if (!done()) return;
        if (reply.status === 200 && reply.body) {
          showResults(reply.body, selection);
        } else {
          showFailure(reply.status, reply.body);
        }
      }).catch(function (error) {
        if (error && error.name === "AbortError") return;
        if (!done()) return;
        setStatus("");
        showMessage("network", ["The search could not reach the server. Check your connection."], state.retry);
      });
    }

    function showResults(body, selection) {
      var image = body.image || {};
      if (!state.haveBoxes) {
        state.size = image.width && image.height ? {width: image.width, height: image.height}
          : {width: photo.naturalWidth || 1, height: photo.naturalHeight || 1};
        renderBoxes(body.boxes);
        state.haveBoxes = true;
      }
      var query = body.query || {kind: "whole_photo", index: null, label: null, box: null, note: ""};
      if (query.kind === "detected") {
        var found = state.items.filter(function (item) { return item.index === query.index; })[0];
        state.selection = found ? {kind: "box", item: found} : null;
      } else if (query.kind === "client") {
        state.selection = selection && selection.kind === "box" ? selection : null;
      } else {
        state.selection = {kind: "whole"};
      }
      markSelection();

      var what;
      if (state.selection && state.selection.kind === "box") what = itemName(state.selection.item);
      else what = "the whole photo";
      var results = body.results || [];
      setStatus("Showing " + results.length + " result" + (results.length === 1 ? "" : "s") + " for " + what + "." +
                (state.items.length || query.note ? "" : " No separate items were found in this photo."));
      renderResults(body, query, what);
    }

    function showFailure(status, body) {
      setStatus("");
      body = body || {};
      if (status === 503) {
        showMessage("busy", [body.detail || "Visual search is busy right now.",
                             "Please try again in a moment."], state.retry);
      } else if (status === 400 || status === 413) {
        var lines = [];
        if (body.detail) lines.push(String(body.detail));
        Object.keys(body).forEach(function (name) {
          if (name === "detail") return;
          var texts = [].concat(body[name]).map(String);
          lines.push((FIELD_NAMES[name] || name) + ": " + texts.join(" "));
          var control = form.elements.namedItem(name);
          var field = control && control.closest && control.closest(".field");
          if (field) {
            field.classList.add("has-error");
            field.appendChild(el("p", {"class": "field-error from-api"}, [texts.join(" ")]));
          }
        });
        if (body.image || body.detail) zone.classList.add("has-error");
        showMessage("invalid", lines.length ? lines : ["This photo could not be searched."], null);
      } else {
        showMessage("error", ["Something went wrong on our side (error " + status + ")."], state.retry);
      }
      var stale = resultsArea.querySelector(".results-section.is-stale");
      if (stale) stale.remove();
    }

    // -- results (the same markup as templates/catalog/_product_card.html) ----------------------------------
    function price(value) {
      var number = Number(value);
      if (!isFinite(number)) return String(value);
      return number.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
    }

    function card(hit, body) {
      var product = hit.product || {};
      var src = product.image || product.thumbnail || null;
      var media = src
        ? el("img", {src: src, alt: product.title || "", width: "256", height: "256", loading: "lazy",
                     decoding: "async"})
        : el("span", {"class": "no-image"}, ["No photo"]);
      var stock = product.in_stock
        ? el("span", {"class": "badge badge-in"}, ["In stock"])
        : el("span", {"class": "badge badge-out"}, ["Sold out"]);
      var notSimilar = el("button", {type: "button", "class": "button button-secondary button-small not-similar",
                                     "data-product-id": String(product.id),
                                     "aria-label": "Not similar: " + (product.title || "")}, ["Not similar"]);
      return el("li", {"class": "result", "data-product-id": String(product.id),
                       "data-score": Number(hit.score).toFixed(6)}, [
        el("a", {"class": "card", href: product.url || "#"}, [
          el("div", {"class": "card-media"}, [media]),
          el("div", {"class": "card-body"}, [
            el("h3", {"class": "card-title"}, [product.title || ""]),
            product.brand ? el("p", {"class": "card-brand"}, [product.brand]) : null,
            el("p", {"class": "card-meta"}, [
              el("span", {"class": "price"}, [price(product.price) + " ",
                                                el("span", {"class": "currency"}, [product.currency || ""])]),
              stock
            ]),
            el("p", {"class": "score", title: "Cosine similarity to your photo (1.000 = identical)"}, [
              el("span", {"class": "score-label"}, ["Score"]), " ",
              el("span", {"class": "score-value"}, [Number(hit.score).toFixed(3)])
            ])
          ])
        ]),
        body.feedback_token ? notSimilar : null
      ]);
    }

    function renderResults(body, query, what) {
      var results = body.results || [];
      // Feedback (static/js/feedback.js): the list carries the server's token for these results, and the photo,
      // which a "Not similar" mark sends again (the server keeps a shopper's photo only then).
      var list = el("ol", {"class": "grid product-grid", id: "results", "data-model-version": body.model_version || "",
                           "data-feedback-token": body.feedback_token || null,
                           "data-feedback-url": form.getAttribute("data-feedback-url"),
                           "data-click-url": form.getAttribute("data-click-url")});
      list.feedbackPhoto = state.file;
      results.forEach(function (hit) { list.appendChild(card(hit, body)); });
      if (!results.length) {
        list.appendChild(el("li", {"class": "notice no-results"},
                            ["No products match this item with these filters. Try removing a filter."]));
      }
      var count = results.length;
      var summary = el("p", {"class": "query-summary", id: "query-summary", "data-kind": query.kind,
                             "data-index": query.index === null || query.index === undefined ? "" : query.index,
                             "data-box": query.box ? query.box.join(",") : ""}, [
        "For ", el("strong", {}, [what]), ". Best match first; the score is the cosine similarity (1.000 = identical)."
      ]);
      var head = el("div", {"class": "results-head"}, [
        el("div", {}, [
          el("h2", {id: "results-heading"}, [count + " visually similar product" + (count === 1 ? "" : "s")]),
          summary
        ])
      ]);
      var section = el("section", {"class": "results-section", id: "results-section",
                                   "aria-labelledby": "results-heading",
                                   "data-model-version": body.model_version || ""}, [head]);
      if (query.note) section.appendChild(el("p", {"class": "notice notice-warning query-note", id: "query-note"},
                                             [query.note]));
      section.appendChild(list);
      resultsArea.textContent = "";
      resultsArea.appendChild(section);
    }

    // -- the form: submit and filters search without reloading ---------------------------------------------
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var file = input.files && input.files[0];
      if (!file) {
        clearMessage();
        showMessage("invalid", ["Choose a photo to search with."], null);
        zone.classList.add("has-error");
        return;
      }
      if (file !== state.file) newPhoto(file);
      else search(state.selection);
    });

    ["category", "in_stock", "max_price"].forEach(function (name) {
      var control = form.elements.namedItem(name);
      if (!control) return;
      control.addEventListener("change", function () {
        if (state.file) search(state.selection);
      });
    });

    return {newPhoto: newPhoto};
  }
})();
