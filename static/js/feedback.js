/* Shopper feedback on result lists (the product page's similar products, the visual search results).
 *
 * A result list is an element with data-feedback-token (and data-feedback-url, data-click-url): the token the
 * server signed for exactly these results. Inside it:
 * - a "Not similar" button (.not-similar, hidden until this script runs: it needs fetch) posts the token and the
 *   product to POST /api/feedback/not-similar/ and says "Thanks — sent for review". For a photo search the list
 *   also holds the photo (visual_search.js sets list.feedbackPhoto), which is sent again: the server keeps a
 *   shopper's photo only when a result is marked.
 * - following a result's link (a.card) records a click with navigator.sendBeacon, which neither delays the
 *   navigation nor waits for an answer.
 * Buttons rendered later (visual_search.js draws its results after each search) work too: clicks are handled
 * on the document.
 */
(function () {
  "use strict";

  if (!(window.fetch && window.FormData)) return;

  var THANKS = "Thanks — sent for review";

  function reveal() {
    document.querySelectorAll("[data-feedback-token] .not-similar[hidden]").forEach(function (button) {
      button.hidden = false;
    });
  }

  function csrfToken(list) {
    if (list.getAttribute("data-csrf-token")) return list.getAttribute("data-csrf-token");
    var field = document.querySelector('input[name="csrfmiddlewaretoken"]');
    if (field && field.value) return field.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function feedbackData(list, productId) {
    var data = new FormData();
    data.append("token", list.getAttribute("data-feedback-token"));
    data.append("product", productId);
    return data;
  }

  // The result (list item) a control belongs to; the button carries the product id too, so start at its parent.
  function resultOf(node) {
    return node.parentElement && node.parentElement.closest("[data-product-id]");
  }

  function say(button, text, done) {
    var note = button.parentNode.querySelector(".feedback-status");
    if (!note) {
      note = document.createElement("p");
      note.className = "feedback-status muted";
      note.setAttribute("role", "status");
      button.parentNode.insertBefore(note, button.nextSibling);
    }
    note.textContent = text;
    if (done) {
      button.hidden = true;
      resultOf(button).classList.add("is-marked");
    }
  }

  function failure(status, body) {
    if (status === 429) return "Too many reports from you right now; please try again in a minute.";
    if (status === 400 && body) {
      var messages = [];
      Object.keys(body).forEach(function (name) { messages = messages.concat(body[name]); });
      if (messages.length) return messages.join(" ");
    }
    return "Your report could not be sent (error " + status + "). Please try again.";
  }

  function markNotSimilar(button) {
    var list = button.closest("[data-feedback-token]");
    var item = resultOf(button);
    if (!list || !item || button.disabled) return;
    var data = feedbackData(list, item.getAttribute("data-product-id"));
    if (list.feedbackPhoto) data.append("image", list.feedbackPhoto, list.feedbackPhoto.name || "photo");
    button.disabled = true;
    fetch(list.getAttribute("data-feedback-url"), {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: {"X-CSRFToken": csrfToken(list), "Accept": "application/json"}
    }).then(function (response) {
      return response.json().then(
        function (body) { return {status: response.status, body: body}; },
        function () { return {status: response.status, body: null}; }
      );
    }).then(function (reply) {
      if (reply.status === 200 || reply.status === 201) {
        say(button, THANKS, true);
      } else {
        button.disabled = false;
        say(button, failure(reply.status, reply.body), false);
      }
    }).catch(function () {
      button.disabled = false;
      say(button, "Your report could not reach the server. Check your connection and try again.", false);
    });
  }

  function recordClick(link) {
    var list = link.closest("[data-feedback-token]");
    var item = link.closest("[data-product-id]");
    var url = list && list.getAttribute("data-click-url");
    if (!url || !item) return;
    var data = feedbackData(list, item.getAttribute("data-product-id"));
    data.append("csrfmiddlewaretoken", csrfToken(list)); // a beacon cannot set headers; DRF reads the field
    if (navigator.sendBeacon && navigator.sendBeacon(url, data)) return;
    fetch(url, {method: "POST", body: data, credentials: "same-origin", keepalive: true}).catch(function () {});
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".not-similar");
    if (button) {
      event.preventDefault();
      markNotSimilar(button);
      return;
    }
    var link = event.target.closest("[data-feedback-token] a.card");
    if (link) recordClick(link);
  });

  reveal();
  window.visnetFeedback = {reveal: reveal};
})();
