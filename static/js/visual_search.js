/* Visual search: drag-and-drop onto the drop zone fills the real file input and shows a preview.
 * Progressive enhancement only: without JavaScript the visible file input and the form work as is. */
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

  input.addEventListener("change", function () {
    showFile(input.files && input.files[0]);
  });

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

  if (form) {
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
})();
