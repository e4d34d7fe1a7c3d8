// TinyGiant in the browser: the four graphs of `tinygiant export onnx` on onnxruntime-web (WebGPU where the browser
// has it, else WebAssembly), with transformers.js for the tokenizer, the chat template and the mel features.
// It follows onnx_tinygiant.py step by step: the same prompt (the checkpoint's chat template), the same windows and
// lengths as processing_tinygiant.py, the audio encoder once per clip, greedy decoding with the KV cache.
//
// URL parameters: model (the exported folder, default "model/"), dtype (fp32, q8, q4, fp16; default q8),
// max_new_tokens (default: the checkpoint's generation config, else 1024).
import * as ort from 'onnxruntime-web/webgpu';
import * as transformers from '@huggingface/transformers';

const PARTS = ['audio_encoder', 'projector', 'embed_tokens', 'decoder_model_merged'];
const SUFFIX = { fp32: '', fp16: '_fp16', q8: '_quantized', q4: '_q4' };  // transformers.js's file names
const LETTERS = 'abcdefghijklmnopqrstuvwxyz';
// configuration_tinygiant.AUDIO_LAYOUT, fixed by the encoders: Whisper's 30 s windows at 16 kHz give 1500 frames,
// HTS-AT's 10 s windows at 48 kHz 32 time steps.
const LAYOUT = { whisperRate: 16000, whisperSeconds: 30, whisperFrames: 1500, clapRate: 48000, htsatSeconds: 10,
                 htsatFrames: 32 };
const params = new URLSearchParams(location.search);
const MODEL = new URL(params.get('model') ?? 'model/', location.href);
const DTYPE = params.get('dtype') ?? 'q8';
const $ = (id) => document.getElementById(id);

ort.env.wasm.wasmPaths = new URL('./vendor/', location.href).href;
// What loads once, and counters a script (the page's test) can wait on: clips read, questions answered, audio
// encoder runs (a follow-up question skips it).
const model = { clips: 0, answers: 0, encoderRuns: 0 };
window.tinygiant = model;

function setStatus(text, state) {
  $('status').textContent = text;
  $('status').className = state === 'error' ? 'error' : '';
  document.body.dataset.state = state;
}

// ----------------------------------------------------------------------------------------------------- loading

async function fetchWithProgress(url, onProgress) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname ?? url} is missing (HTTP ${response.status}): export the folder with ` +
                                    '`tinygiant export onnx MODEL_DIR OUT`');
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) { bytes.set(chunk, offset); offset += chunk.length; }
  return bytes;
}

async function fetchJson(name) {
  const response = await fetch(new URL(name, MODEL));
  if (!response.ok) throw new Error(`${name} is missing from ${MODEL.href}`);
  return response.json();
}

async function load() {
  const gpu = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  const providers = gpu ? ['webgpu', 'wasm'] : ['wasm'];
  $('backend').textContent = gpu ? 'WebGPU' : 'WebAssembly';
  model.config = await fetchJson('config.json');
  model.processorConfig = await fetchJson('processor_config.json');
  model.generationConfig = await fetchJson('generation_config.json').catch(() => ({}));
  const template = await fetch(new URL('chat_template.jinja', MODEL));
  model.chatTemplate = template.ok ? await template.text() : model.processorConfig.chat_template;
  // The tokenizer class its config names, as transformers.js's AutoTokenizer picks it, built from the folder's files.
  const [tokenizerJson, tokenizerConfig] = await Promise.all([fetchJson('tokenizer.json'), fetchJson('tokenizer_config.json')]);
  const Tokenizer = transformers[tokenizerConfig.tokenizer_class?.replace(/Fast$/, '')] ?? transformers.PreTrainedTokenizer;
  model.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  model.whisperFeatures = new transformers.WhisperFeatureExtractor(model.processorConfig.whisper_feature_extractor);
  model.clapFeatures = new transformers.ClapFeatureExtractor(model.processorConfig.feature_extractor);

  model.sessions = {};
  const done = {};
  for (const part of PARTS) {
    const file = `onnx/${part}${SUFFIX[DTYPE]}.onnx`;
    const bytes = await fetchWithProgress(new URL(file, MODEL), (received, total) => {
      done[part] = total ? received / total : 0;
      const share = PARTS.reduce((sum, p) => sum + (done[p] ?? 0), 0) / PARTS.length;
      $('load-progress').value = share;
      $('load-status').textContent = `Downloading ${file}: ${(received / 1e6).toFixed(1)} MB`;
    });
    done[part] = 1;
    $('load-status').textContent = `Preparing ${part}…`;
    model.sessions[part] = await ort.InferenceSession.create(bytes, { executionProviders: providers });
  }
  $('load-progress').value = 1;
  $('load-status').textContent = `Ready: ${MODEL.pathname} (${DTYPE}).`;
  $('ask').disabled = false;
  setStatus('Choose or record a clip, then ask.', 'ready');
}

// ----------------------------------------------------------------------------------------------------- audio

// Decode and resample in one step: an OfflineAudioContext decodes a file at its own rate (Web Audio resamples).
async function decodeAt(bytes, rate) {
  const context = new OfflineAudioContext(1, 1, rate);
  const buffer = await context.decodeAudioData(bytes.slice().buffer);  // a copy: decoding detaches it
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return mono;
}

function windows(samples, size) {
  const out = [];
  for (let i = 0; i < samples.length; i += size) out.push(samples.slice(i, i + size));
  return out;
}

// CLAP's "repeatpad" as transformers (Python) does it: the window repeated a whole number of times, then zeros.
// transformers.js's own leaves the last repeat out when the window divides the length, so it gets the padded window.
function repeatPad(window, length) {
  const padded = new Float32Array(length);
  const repeats = Math.floor(length / window.length);
  for (let r = 0; r < repeats; r++) padded.set(window, r * window.length);
  return window.length >= length ? window : padded;
}

function stack(tensors) {
  const size = tensors[0].data.length;
  const data = new Float32Array(size * tensors.length);
  tensors.forEach((t, i) => data.set(t.data, i * size));
  return new ort.Tensor('float32', data, [tensors.length, ...tensors[0].dims.slice(1)]);
}

const int64 = (values, dims) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims);

// processing_tinygiant.py's `extract_audio_features` for one clip: the same checks, windows and lengths.
async function readClip(name, bytes) {
  let audio16k, audio48k;
  try {
    [audio16k, audio48k] = await Promise.all([decodeAt(bytes, LAYOUT.whisperRate), decodeAt(bytes, LAYOUT.clapRate)]);
  } catch (error) {
    throw new Error(`cannot decode audio file ${name}: ${error.message || error}`);
  }
  if (audio16k.length < 2) throw new Error(`audio has ${audio16k.length} samples; it needs at least 2`);
  if (!audio16k.every(Number.isFinite)) throw new Error('audio contains NaN or Inf samples');
  const seconds = audio16k.length / LAYOUT.whisperRate;
  const max = model.processorConfig.max_audio_seconds ?? 600;
  if (seconds > max) {
    throw new Error(`audio is ${seconds.toFixed(1)} s long; the maximum is ${Number.isInteger(max) ? max.toFixed(1) : max} s`);
  }
  const whisper = [], clap = [];
  const whisperWindow = LAYOUT.whisperSeconds * LAYOUT.whisperRate, htsatWindow = LAYOUT.htsatSeconds * LAYOUT.clapRate;
  for (const w of windows(audio16k, whisperWindow)) whisper.push((await model.whisperFeatures(w)).input_features);
  for (const w of windows(audio48k, htsatWindow)) clap.push((await model.clapFeatures(repeatPad(w, htsatWindow))).input_features);
  return {
    name, seconds, encoded: null,
    features: {
      whisper_input_features: stack(whisper),
      clap_input_features: stack(clap),
      whisper_lengths: int64([Math.ceil(seconds * LAYOUT.whisperFrames / LAYOUT.whisperSeconds)], [1]),
      htsat_lengths: int64([Math.ceil(seconds * LAYOUT.htsatFrames / LAYOUT.htsatSeconds)], [1]),
    },
  };
}

// ----------------------------------------------------------------------------------------------------- prompt

// parsing_tinygiant.py's `check_choices` and `format_question`.
function formatQuestion(question, choices) {
  question = question.trim();
  if (!question) throw new Error('the question is empty');
  if (!choices) return question;
  choices = choices.map((c) => c.trim());
  if (choices.length < 2 || choices.length > 6) {
    throw new Error(`a multiple-choice question needs 2 to 6 choices, got ${choices.length}`);
  }
  if (choices.some((c) => !c)) throw new Error('a choice is empty');
  const lowered = choices.map((c) => c.toLowerCase());
  if (new Set(lowered).size < lowered.length) throw new Error('duplicate choices');
  return `${question}\n${choices.map((c, i) => `(${LETTERS[i]}) ${c}`).join('\n')}`;
}

// The processor's `input_ids` and `instruction_mask` (eq. 11): each `<audio>` becomes N placeholders, and the
// instruction is the user turns' text. Tokenised piece by piece between the chat markup, so that each token's piece
// tells whether it is the user's; the pieces must give the whole prompt's ids.
function encodePrompt(prompt) {
  const { audio_token: audio, num_audio_tokens: n } = model.processorConfig;
  const expanded = prompt.replaceAll(audio, audio.repeat(n));
  const ids = model.tokenizer.encode(expanded);
  const users = [...expanded.matchAll(/<\|im_start\|>(system|user|assistant)\n([\s\S]*?)(<\|im_end\|>|$)/g)]
    .filter((m) => m[1] === 'user').map((m) => [m.index + m[0].indexOf('\n') + 1, m.index + m[1].length + 13 + m[2].length]);
  const pieces = expanded.split(/(<\|im_start\|>(?:system|user|assistant)\n|<\|im_end\|>|<audio>)/).filter(Boolean);
  const pieceIds = [], mask = [];
  let offset = 0;
  for (const piece of pieces) {
    const pieceTokens = model.tokenizer.encode(piece, { add_special_tokens: false });
    const user = piece !== audio && users.some(([start, end]) => offset >= start && offset < end);
    pieceIds.push(...pieceTokens);
    mask.push(...pieceTokens.map(() => (user ? 1 : 0)));
    offset += piece.length;
  }
  if (pieceIds.length !== ids.length || pieceIds.some((id, i) => id !== ids[i])) {
    throw new Error('the prompt tokenises differently piece by piece: cannot mark the instruction');
  }
  return { ids, mask };
}

// ----------------------------------------------------------------------------------------------------- the model

async function run(part, feeds) {
  const session = model.sessions[part];
  return session.run(Object.fromEntries(session.inputNames.map((name) => [name, feeds[name]])));
}

async function embed(ids) {
  return (await run('embed_tokens', { input_ids: int64(ids, [1, ids.length]) })).inputs_embeds;
}

async function promptEmbeddings(clip, ids, mask) {
  if (!clip.encoded) {  // once per clip: follow-up questions reuse it
    clip.encoded = await run('audio_encoder', clip.features);
    model.encoderRuns += 1;
  }
  const embeds = await embed(ids);
  const d = embeds.dims[2], data = embeds.data;
  const placeholders = ids.map((id) => id === model.config.audio_token_id);
  const intent = new Float32Array(d);
  let count = 0;
  ids.forEach((_, t) => {
    if (!mask[t] || placeholders[t]) return;
    count += 1;
    for (let j = 0; j < d; j++) intent[j] += data[t * d + j];
  });
  for (let j = 0; j < d; j++) intent[j] /= Math.max(count, 1);  // (11)
  const feeds = { ...clip.encoded, intent_query: new ort.Tensor('float32', intent, [1, d]) };
  const audioEmbeds = (await run('projector', feeds)).audio_embeds.data;
  let row = 0;
  ids.forEach((_, t) => {
    if (placeholders[t]) data.set(audioEmbeds.subarray(row * d, (row + 1) * d), t * d), row += 1;
  });
  return embeds;
}

async function* generate(embeds, maxNewTokens, eos) {
  const text = model.config.text_config;
  const headDim = text.head_dim ?? text.hidden_size / text.num_attention_heads;
  let past = {};
  for (let i = 0; i < text.num_hidden_layers; i++) {
    for (const kind of ['key', 'value']) {
      past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0),
                                                            [1, text.num_key_value_heads, 0, headDim]);
    }
  }
  let length = 0;
  for (let step = 0; step < maxNewTokens; step++) {
    const steps = embeds.dims[1];
    const outputs = await run('decoder_model_merged', {
      inputs_embeds: embeds, attention_mask: int64(new Array(length + steps).fill(1), [1, length + steps]),
      position_ids: int64(Array.from({ length: steps }, (_, i) => length + i), [1, steps]), ...past,
    });
    past = Object.fromEntries(Object.keys(past).map((name) => [name, outputs[name.replace('past_key_values', 'present')]]));
    length += steps;
    const logits = outputs.logits.data;
    let token = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[token]) token = i;
    yield token;
    if (eos.has(token)) return;
    embeds = await embed([token]);
  }
}

// ----------------------------------------------------------------------------------------------------- the page

let clip = null;

function show(text) {
  $('text').textContent = text;
  const end = text.indexOf('</think>');
  $('thinking').textContent = (end < 0 ? text : text.slice(0, end)).replace('<think>', '').trim();
  $('answer').textContent = end < 0 ? '' : text.slice(end + '</think>'.length).trim();
}

async function useClip(name, bytes) {
  setStatus('Reading the clip…', 'busy');
  try {
    clip = await readClip(name, bytes);
    $('clip-info').textContent = `${name}, ${clip.seconds.toFixed(1)} s`;
    setStatus('Clip ready: ask a question.', 'ready');
  } catch (error) {
    clip = null;
    $('clip-info').textContent = '';
    setStatus(error.message, 'error');
  } finally {
    model.clips += 1;
  }
}

async function ask() {
  if (!clip) return setStatus('Choose or record a clip first.', 'error');
  $('ask').disabled = true;
  try {
    const choices = $('choices').value.trim() ? $('choices').value.split('|') : null;
    const messages = [{ role: 'user', content: [{ type: 'audio' }, { type: 'text', text: formatQuestion($('question').value, choices) }] }];
    // `{% generation %}` only marks assistant tokens for training masks; Jinja renderers without it skip the tags.
    const template = model.chatTemplate.replace(/\{%-?\s*(end)?generation\s*-?%\}/g, '');
    const prompt = model.tokenizer.apply_chat_template(messages, { chat_template: template, add_generation_prompt: true,
                                                                  tokenize: false });
    const { ids, mask } = encodePrompt(prompt);
    model.last = { prompt, ids, mask };  // for inspection (and the page's test)
    setStatus(clip.encoded ? 'Thinking (the clip is already encoded)…' : 'Listening and thinking…', 'busy');
    const embeds = await promptEmbeddings(clip, ids, mask);
    const eosIds = model.generationConfig.eos_token_id ?? [];
    const eos = new Set(Array.isArray(eosIds) ? eosIds : [eosIds]);
    const maxNewTokens = Number(params.get('max_new_tokens') ?? model.generationConfig.max_new_tokens ?? 1024);
    const tokens = [];
    for await (const token of generate(embeds, maxNewTokens, eos)) {
      tokens.push(token);
      show(model.tokenizer.decode(tokens, { skip_special_tokens: true }));
    }
    const finished = tokens.some((t) => eos.has(t));
    setStatus(finished ? 'Done.' : `Done (stopped at ${maxNewTokens} tokens).`, 'done');
  } catch (error) {
    setStatus(error.message, 'error');
  } finally {
    $('ask').disabled = false;
    model.answers += 1;
  }
}

$('file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (file) await useClip(file.name, new Uint8Array(await file.arrayBuffer()));
});

let recorder = null;
$('record').addEventListener('click', async () => {
  if (recorder) return recorder.stop();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (event) => chunks.push(event.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((track) => track.stop());
      recorder = null;
      $('record').textContent = '● Record';
      await useClip('recording', new Uint8Array(await new Blob(chunks).arrayBuffer()));
    };
    recorder.start();
    $('record').textContent = '■ Stop';
    setStatus('Recording… press Stop when done.', 'busy');
  } catch (error) {
    setStatus(`cannot record: ${error.message}`, 'error');
  }
});

$('ask').addEventListener('click', ask);
load().catch((error) => {
  $('load-status').textContent = `Cannot load the model: ${error.message}`;
  setStatus(`Cannot load the model: ${error.message}`, 'error');
});
