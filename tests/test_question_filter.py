"""Questions that are questions: generated prompts that address the user, echo the meta-prompt or say
nothing, and answers that only ask back, in several languages; hand-written positives and negatives."""

from __future__ import annotations

import pytest
from datatrove.data import Document

from dataengine.checks.questions import echo_share
from dataengine.curate.filters.question import QuestionFilter
from dataengine.generate.seeds import load_languages

TOPIC = {"en": "photosynthesis", "fr": "la photosynthèse", "es": "la fotosíntesis", "de": "Photosynthese"}
TOPIC["zh"] = "光合作用"
LONG_ANSWER = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 6


def verdict(
    language: str, question: str, answer: str = LONG_ANSWER, task: str = "instruct_answer", question_end: str = "stop"
):
    topic = TOPIC[language]
    row = {
        "kind": "chat",
        "task": task,
        "language": language,
        "topic": topic,
        "instruction": load_languages()[language]["instruction"].format(topic=topic),
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "question_finish_reason": question_end,
    }
    result = QuestionFilter(max_echo=0.4).filter(Document(text=answer, id="r", metadata=row))
    return True if result is True else result[1]


@pytest.mark.parametrize(
    "language, question",
    [
        ("en", "How do plants turn sunlight into chemical energy during photosynthesis?"),
        ("fr", "Comment les plantes transforment-elles la lumière en énergie pendant la photosynthèse ?"),
        ("es", "¿Por qué las hojas de las plantas son verdes durante la fotosíntesis?"),
        ("de", "Warum brauchen Pflanzen Licht für die Photosynthese?"),
        ("zh", "植物在光合作用中如何把光能转化为化学能？"),
        ("zh", "什么是黑洞？"),  # five characters: short, not empty
    ],
)
def test_real_questions_pass(language, question):
    assert verdict(language, question) is True


@pytest.mark.parametrize(
    "language, question, reason",
    [
        ("en", "I'd be happy to help! Please provide your question.", "question_addresses_user"),
        ("en", "What would you like to know about photosynthesis?", "question_addresses_user"),
        ("fr", "Bien sûr ! Quelle est votre question sur la photosynthèse ?", "question_addresses_user"),
        ("es", "¡Hola! ¿En qué puedo ayudarte hoy?", "question_addresses_user"),
        ("de", "Gerne! Was möchtest du über Photosynthese wissen?", "question_addresses_user"),
        ("zh", "你好！有什么可以帮你的吗？", "question_addresses_user"),
        ("zh", "请提出你的问题，我会尽力回答。", "question_addresses_user"),
        (
            "en",
            "Write one clear, specific question that a curious student might ask about photosynthesis.",
            "question_echoes_prompt",
        ),
        (
            "es",
            "Escribe una sola pregunta clara y concreta que un estudiante curioso podría hacer sobre el tema.",
            "question_echoes_prompt",
        ),
        (
            "fr",
            "Écris une seule question claire et précise qu'un étudiant curieux pourrait poser sur le sujet.",
            "question_echoes_prompt",
        ),
        ("zh", "请写一个好奇的学生可能会提出的关于以下主题的清晰而具体的问题", "question_echoes_prompt"),
        ("en", "?!", "question_empty"),
        ("zh", "问题：", "question_empty"),
    ],
)
def test_prompts_that_are_not_questions_are_dropped_with_their_reason(language, question, reason):
    assert verdict(language, question) == reason


@pytest.mark.parametrize(
    "language, answer",
    [
        ("en", "Could you provide more details about what you want to know?"),
        ("fr", "Pourriez-vous préciser votre demande ?"),
        ("es", "¿Podrías aclarar qué parte de la fotosíntesis te interesa?"),
        ("zh", "请提供更多细节，我才能回答。"),
        ("en", "Sure! Please provide the question you'd like me to answer."),
        ("zh", "您好！请提供您的问题。"),
    ],
)
def test_an_answer_that_only_asks_back_is_dropped(language, answer):
    question = {"en": "How does photosynthesis work?", "fr": "Comment fonctionne la photosynthèse ?"}
    question |= {"es": "¿Cómo funciona la fotosíntesis?", "zh": "光合作用是如何进行的？"}
    assert verdict(language, question[language], answer) == "answer_asks_back"
    # a long answer that ends by offering more help still answers
    assert verdict(language, question[language], LONG_ANSWER + answer) is True


def test_a_question_cut_off_by_its_token_cap_is_dropped_unless_it_got_to_its_question_mark():
    assert verdict("en", "How do plants turn sunlight into", question_end="length") == "question_truncated"
    assert verdict("en", "How do plants turn sunlight into sugar?", question_end="length") is True


def test_answers_that_give_instructions_are_not_asking_back():
    passport = "To renew a passport, please provide two photos, your ID and the fee at the town hall."
    assert verdict("en", "How do I renew my passport?", passport) is True
    assert verdict("zh", "怎么办护照？", "办护照需要带身份证和照片，请提供两张照片和身份证复印件。" * 2) is True


def test_the_users_own_prompts_and_code_rows_are_not_judged_as_generated_questions():
    # a prompt from the user's file (task other than instruct_answer) may be anything the user asked
    assert verdict("en", "Please provide your question format.", task="answer") is True
    code = {"kind": "code", "task": "code_task", "language": "en", "messages": []}
    assert QuestionFilter(0.4).filter(Document(text="?", id="c", metadata=code)) is True


def test_the_echo_share_leaves_the_topic_out():
    instruction = load_languages()["en"]["instruction"].format(topic="the water cycle")
    assert echo_share("What drives the water cycle?", instruction, "en", ("the water cycle",)) == 0.0
    assert echo_share("a curious student might ask about", instruction, "en", ("the water cycle",)) == 1.0
